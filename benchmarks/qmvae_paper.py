"""Reproduce QM-VAE's §5 on the first 1,000 CelebA images (Qiu et al., Appl. Sci. 2022, seed 000).

Split as §5.1: files 000001-000800 train, 000801-001000 test (faces the detector misses are
skipped and counted). Every result is measured on the test faces after pasting the 64x64 fused
face back into the 89x109 CelebA image, then:

* service loss rate (Eq. 8) with the paper's workflow: Haar cascade on the whole image ->
  64x64 gray -> mini-Xception (``create_service("expression", crop="haar")``), per expression
  too (Table 3 layout);
* SDR: fraction of faces whose dlib 128-D distance to the original exceeds tau = 0.6;
* rank-1: each de-identified test face is matched against the 200 original test faces
  (identities from identity_CelebA.txt); the fraction whose nearest original has its identity;
* SSIM / PSNR inside the face box.

Run (one training, metrics at epochs 10/20/30/40, result JSON + checkpoint)::

    python benchmarks/qmvae_paper.py --alpha 0.4 --epochs 40 --mode blackbox \
        --out runs/qmvae/a0.4_blackbox.pt --json runs/qmvae/a0.4_blackbox.json
    python benchmarks/qmvae_paper.py --baselines --json runs/qmvae/baselines.json
    python benchmarks/qmvae_paper.py --evaluate runs/qmvae/a0.4_blackbox.pt --json ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "celeba-first10k"
DEFAULT_INPUTS = ["blindfold", "mosaic:block_size=4", "laplace", "cartoon"]
CACHE = REPO / "runs" / "qmvae_cache"


def prepare(inputs: list[str], size: int = 64, limit: int = 1000, train_last: int = 800):
    """``(train, test)`` face stacks of the paper's split (by file number, not face count)."""
    from facedeid.training.qmvae import build_face_stacks, list_images

    paths = list_images(DATA / "img_align_celeba", limit)
    stacks = build_face_stacks(paths, inputs, size, cache_dir=CACHE)
    numbers = np.array([int(Path(name).stem) for name in stacks.names])
    return (stacks.subset(np.flatnonzero(numbers <= train_last)),
            stacks.subset(np.flatnonzero(numbers > train_last)))


class TestBench:
    """Loads the test originals once; measures any set of fused 64x64 test faces."""

    def __init__(self, test, size: int = 64):
        from facedeid.alignment import FaceAligner
        from facedeid.evaluation.services import create_service
        from facedeid.io.images import read_image

        self.test = test
        self.mask = FaceAligner(size=size).mask
        self.originals = [read_image(DATA / "img_align_celeba" / name).rgb for name in test.names]
        self.service = create_service("expression", crop="haar")
        self.reference = self.service.predict(self.originals, None)
        self._privacy = None

    def paste(self, faces: np.ndarray) -> list[np.ndarray]:
        """Fused ``(N, S, S, 3) uint8`` faces pasted into copies of the test images."""
        from facedeid.alignment import FaceCrop, paste_back

        images = []
        for original, face, matrix in zip(self.originals, faces, self.test.to_image):
            crop = FaceCrop(pixels=face, landmarks=np.full((5, 2), np.nan, np.float32),
                            box=np.zeros(4, np.float32), mask=self.mask, to_image=matrix)
            images.append(paste_back(original.copy(), crop, face))
        return images

    def service_metrics(self, images: list[np.ndarray]) -> dict:
        result = self.service.compare(self.reference, self.service.predict(images, None))
        return {"haar_service_loss_rate": result["service_loss_rate"],
                "haar_per_class_loss_rate": result["per_class_loss_rate"],
                "haar_per_class_count": result["per_class_count"],
                "haar_found_rate_anonymized": result["found_rate_anonymized"],
                "haar_loss_rate_both_found": result["service_loss_rate_both_found"]}

    def _privacy_setup(self):
        if self._privacy is None:
            from facedeid.detection import create_detector
            from facedeid.evaluation.recognizers import create_recognizer

            detector = create_detector("centerface")
            boxes = []
            for image in self.originals:
                faces = detector.detect(image)
                boxes.append(max(faces, key=lambda f: f.width * f.height).box if faces else
                             np.array([0, 0, image.shape[1], image.shape[0]], np.float32))
            recognizer = create_recognizer("dlib")
            identities = {}
            for line in (DATA / "identity_CelebA.txt").read_text().splitlines():
                name, _, identity = line.partition(" ")
                identities[name] = identity.strip()
            ids = [identities.get(name, name) for name in self.test.names]
            self._privacy = (boxes, recognizer, recognizer.embed(self.originals, boxes), ids)
        return self._privacy

    def privacy_quality(self, images: list[np.ndarray]) -> dict:
        from facedeid.evaluation.privacy import (identity_distance, rank1_identification_rate,
                                                 successful_deidentification_rate)
        from facedeid.evaluation.quality import image_quality

        boxes, recognizer, original_embeddings, ids = self._privacy_setup()
        embeddings = recognizer.embed(images, boxes, reference_images=self.originals)
        distances = identity_distance(original_embeddings, embeddings, recognizer.metric)
        quality = [image_quality(o, a, b) for o, a, b in zip(self.originals, images, boxes)]
        return {"sdr_dlib_0.6": successful_deidentification_rate(distances, 0.6),
                "mean_identity_distance": float(distances.mean()),
                "rank1_vs_test_originals": rank1_identification_rate(
                    embeddings, ids, original_embeddings, ids, recognizer.metric),
                "face_ssim": float(np.mean([q["face_ssim"] for q in quality])),
                "face_psnr": float(np.mean([q["face_psnr"] for q in quality]))}

    def measure(self, faces: np.ndarray, privacy: bool = True) -> dict:
        images = self.paste(faces)
        result = self.service_metrics(images)
        if privacy:
            result.update(self.privacy_quality(images))
        return result


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alpha", type=float, default=0.4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--mode", choices=("blackbox", "whitebox"), default="blackbox")
    parser.add_argument("--inputs", default=";".join(DEFAULT_INPUTS),
                        help="input methods separated by ';'")
    parser.add_argument("--eval-epochs", default="10,20,30,40")
    parser.add_argument("--out", help="checkpoint path")
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--evaluate", metavar="CKPT", help="only measure this checkpoint")
    parser.add_argument("--baselines", action="store_true",
                        help="measure the input operators themselves (Table 2/3 rows)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pairs", type=int, default=1, help="NES direction pairs per face")
    parser.add_argument("--service-faces", type=int, default=0,
                        help="faces per batch that get NES queries (0 = all)")
    parser.add_argument("--hidden", type=int, default=32, help="widest layer of the network")
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="1: robust on a shared CPU")
    parser.add_argument("--train-limit", type=int, default=None, help="smoke runs: fewer faces")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    inputs = [spec for spec in args.inputs.split(";") if spec]

    from facedeid.models.qmvae import QMVAEConfig, load_qmvae
    from facedeid.training.qmvae import TrainConfig, train_qmvae

    train, test = prepare(inputs)
    if args.train_limit:
        train = train.subset(np.arange(min(args.train_limit, len(train))))
    bench = TestBench(test)
    results: dict = {"inputs": inputs, "train_faces": len(train), "test_faces": len(test),
                     "skipped": train.skipped}
    if args.baselines:
        for position, spec in enumerate(inputs):
            results[spec] = bench.measure(test.versions[:, position])
            print(spec, json.dumps(results[spec]))
    elif args.evaluate:
        model, payload = load_qmvae(args.evaluate)
        started = time.perf_counter()
        faces = model.fuse(test.stacks())
        results["fuse_seconds_per_face"] = (time.perf_counter() - started) / len(test)
        results["final"] = bench.measure(faces)
        results["history"] = payload.get("history")
        print(json.dumps(results["final"], indent=1))
    else:
        eval_epochs = tuple(int(e) for e in args.eval_epochs.split(","))
        config = TrainConfig(alpha=args.alpha, epochs=args.epochs, mode=args.mode,
                             eval_epochs=eval_epochs, pairs=args.pairs,
                             service_faces=args.service_faces, batch_size=args.batch_size)

        def on_eval(epoch, model):
            measured = bench.measure(model.fuse(test.stacks()), privacy=epoch == args.epochs)
            return {key: value for key, value in measured.items() if not isinstance(value, dict)}

        started = time.perf_counter()
        model_config = QMVAEConfig(inputs=inputs, hidden=args.hidden, latent_dim=args.latent_dim)
        model, history = train_qmvae(train, config, model_config, test=test,
                                     out=args.out, resume=args.resume, on_eval=on_eval)
        results.update({"alpha": args.alpha, "mode": args.mode, "epochs": args.epochs,
                        "wall_seconds": round(time.perf_counter() - started, 1),
                        "history": history})
        results["final"] = bench.measure(model.fuse(test.stacks()))
        print(json.dumps(results["final"], indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
