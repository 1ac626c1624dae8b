"""IdentityDP (book ch. 5) and the password-invertible method (ch. 6) on the identity-disjoint
celeba-id200 test people.

1. ``facedeid evaluate`` over ε ∈ {0.57, 1, 2, 6, 10, 100, 1000, 10000, ∞} (∞ = the Stage I
   redraw without noise, ε 1e12), the password method at d = low / mid / high and the
   comparison rows (Private-Encoder β 0.2, k-Same, QM-VAE, the identity cloak, blur, mosaic,
   pixelate) on the same faces, against dlib and the surrogate (independent) and faceres
   (the identity encoder: "seen in training"): Table 5.1/5.2's ID distance, SDR, TAR, PSNR,
   SSIM, embedding-Fréchet distance and detection rate (dlib HOG).
2. Fig. 5.4/5.5 as one plot: ID distance and SDR against ε, and the diversity of 5 draws of
   the same face (mean pairwise dlib distance).
3. Tables 6.1-6.4 on faces anonymized with ``password`` and restored with ``restore_image``:
   de-identification per level (Id-dis / SR), landmark pixel distance (dlib 68 points; face,
   eyes, nose, mouth) and detection rate (6.2), wrong vs right password recovery (6.3) and the
   restored image quality (PSNR, SSIM, MAE, faceres-LPIPS) next to the book's classic
   reversals: Wiener-deconvolved blur, bilinearly interpolated pixelation and non-local-means
   denoised noise (6.4).
4. A before/after grid, the sensitivity Δf and inference speed next to Private-Encoder.

    python benchmarks/identity_dp_paper.py --limit 300 --out runs/idp_paper
    python benchmarks/identity_dp_paper.py --out runs/idp_paper --skip-eval   # tables again
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import faces_per_second  # noqa: E402

EPSILONS = (0.57, 1, 2, 6, 10, 100, 1000, 10000)
INFINITE = 1e12  # no noise: the Stage I redraw
LEVELS = ("low", "mid", "high")
#: (level, detail) variants of the password method measured in Tables 6.1-6.4
PASSWORD_VARIANTS = (("low", "redraw"), ("mid", "redraw"), ("high", "redraw"), ("mid", "keep"))
OTHERS = ("private_encoder:beta=0.2", "ksame", "qmvae", "identity_cloak", "blur:kernel_size=33",
          "mosaic", "pixelate")
RECOGNIZERS = ("dlib", "surrogate", "faceres")
INDEPENDENT = ("dlib", "surrogate")
BENCH_PASSWORD = "benchmark password, not a secret"


def specs() -> list[str]:
    rows = [f"identity_dp:eps={eps},label=idp_eps_{eps}" for eps in EPSILONS]
    rows.append(f"identity_dp:eps={INFINITE:g},label=idp_eps_inf")
    rows += [f"password:level={level},detail={detail},label=password_{level}_{detail}"
             for level, detail in PASSWORD_VARIANTS]
    for spec in OTHERS:
        name, _, params = spec.partition(":")
        rows.append(f"{spec}{',' if params else ':'}label=other_{name}")
    return rows


def run_evaluation(out: Path, limit: int | None, cache_dir: str) -> Path:
    command = [sys.executable, "-m", "facedeid", "evaluate", "--compare", *specs(),
               "--dataset", "celeba-id200", "--split", "test", "--seed", "0", "--no-parrot",
               "--services", "detection", "--cache-dir", cache_dir, "--out", str(out / "sweep")]
    for name in RECOGNIZERS:
        command += ["--recognizer", name]
    if limit:
        command += ["--limit", str(limit)]
    print(" ".join(command), flush=True)
    load_before, started = os.getloadavg(), time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, FACEDEID_PASSWORD=BENCH_PASSWORD))
    (out / "sweep_run.json").write_text(json.dumps({
        "command": command, "seconds": round(time.perf_counter() - started, 1),
        "load_before": load_before, "load_after": os.getloadavg()}, indent=1))
    return out / "sweep" / "results.json"


def row_metrics(row: dict) -> dict:
    quality, services = row["quality"], row.get("services", {})
    out = {"face_ssim": quality["face_ssim"], "face_psnr": quality.get("face_psnr"),
           "face_mse": quality["face_mse"],
           "detection": services.get("detection", {}).get("detection_rate")}
    for name, privacy in row["privacy"].items():
        out[f"distance_{name}"] = privacy["identity_distance_mean"]
        out[f"sdr_{name}"] = privacy["sdr"]
        out[f"rank1_{name}"] = privacy["rank1_own_gallery"]
        tar = privacy.get("tar_at_far") or {}
        out[f"tar_{name}"] = next(iter(tar.values()), {}).get("tar") if tar else None
        out[f"frechet_{name}"] = row.get("embedding_frechet_distance", {}).get(name)
    return out


def fmt(value, digits=3) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) \
        else f"{value:.{digits}f}"


def table_5(results: dict) -> tuple[str, dict]:
    rows = {row["label"]: row_metrics(row) for row in results["methods"]}
    header = ("| method | " + " | ".join(f"ID dist {n} | SDR {n} | rank-1 {n}" for n in RECOGNIZERS)
              + " | TAR dlib | face PSNR | face SSIM | Fréchet dlib | detection |")
    lines = [header, "|---|" + "---|---|---|" * len(RECOGNIZERS) + "---|---|---|---|---|"]
    for label, m in rows.items():
        name = label.replace("idp_eps_", "identity_dp ε=").replace("password_", "password ") \
            .replace("other_", "")
        cells = " | ".join(f"{fmt(m[f'distance_{n}'])} | {fmt(m[f'sdr_{n}'])} | "
                           f"{fmt(m[f'rank1_{n}'])}" for n in RECOGNIZERS)
        lines.append(f"| {name} | {cells} | {fmt(m['tar_dlib'])} | {fmt(m['face_psnr'], 2)} | "
                     f"{fmt(m['face_ssim'])} | {fmt(m['frechet_dlib'])} | {fmt(m['detection'])} |")
    return "\n".join(lines), rows


def plot(rows: dict, diversity: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [e for e in EPSILONS if f"idp_eps_{e}" in rows]
    chosen = [rows[f"idp_eps_{e}"] for e in eps]
    figure, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for name in RECOGNIZERS:
        style = "--" if name == "faceres" else "-"
        label = name + (" (seen in training)" if name == "faceres" else "")
        axes[0].plot(eps, [m[f"distance_{name}"] / rows["idp_eps_inf"][f"distance_{name}"]
                           if rows.get("idp_eps_inf") else m[f"distance_{name}"] for m in chosen],
                     "o" + style, label=label)
        axes[1].plot(eps, [m[f"sdr_{name}"] for m in chosen], "o" + style, label=label)
    axes[0].set_title("ID distance vs ε (relative to ε = ∞)")
    axes[1].set_title("SDR vs ε (Fig. 5.4)")
    axes[2].plot(eps, [m["face_ssim"] for m in chosen], "o-", label="face SSIM")
    axes[2].plot(eps, [m["detection"] for m in chosen], "s-", label="detection (dlib HOG)")
    axes[2].set_title("utility vs ε (Fig. 5.5)")
    div_eps = sorted(float(k) for k in diversity)
    axes[3].plot(div_eps, [diversity[f"{k:g}"]["mean_pairwise_dlib"] for k in div_eps], "o-")
    axes[3].axhline(0.6, color="grey", ls=":", label="dlib threshold")
    axes[3].set_title("diversity: 5 draws of one face")
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("ε")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- direct measurements on detected faces ---------------------------------------------------
def test_faces(limit: int) -> list[tuple[np.ndarray, object]]:
    """(image, main face) for the first ``limit`` test images where a face is found."""
    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.io.datasets import load_celeba
    from facedeid.io.images import read_image

    dataset = load_celeba(REPO.parent / "shared" / "data" / "celeba-id200", "test", "disjoint")
    locator, out = FaceLocator(), []
    for record in dataset.records:
        image = read_image(record.path).rgb
        face = main_face(locator.locate(image))
        if face is not None:
            out.append((image, face))
        if len(out) == limit:
            break
    return out


def embed_all(recognizers: dict, images: list[np.ndarray], boxes: list) -> dict:
    return {name: recognizer.embed(images, boxes) for name, recognizer in recognizers.items()}


def distances(recognizers: dict, a: dict, b: dict) -> dict:
    from facedeid.evaluation.privacy import identity_distance
    return {name: identity_distance(a[name], b[name], recognizer.metric)
            for name, recognizer in recognizers.items()}


def diversity(faces, recognizer, draws: int = 5, epsilons=(1, 6, 100, 1000, 10000)) -> dict:
    """Mean pairwise dlib distance between ``draws`` outputs of the same face, per ε."""
    from facedeid.pipeline import Anonymizer

    report = {}
    images, boxes = [f[0] for f in faces], [f[1].box for f in faces]
    for eps in epsilons:
        anonymizer = Anonymizer("identity_dp", {"eps": eps}, allow_weak=True)
        outputs = [[anonymizer.anonymize(image, faces=[face]).image for image, face in faces]
                   for _ in range(draws)]
        embedded = [recognizer.embed(batch, boxes) for batch in outputs]
        pairs = [np.linalg.norm(embedded[i] - embedded[j], axis=1)
                 for i in range(draws) for j in range(i + 1, draws)]
        report[f"{eps:g}"] = {"faces": len(images), "draws": draws,
                              "mean_pairwise_dlib": round(float(np.mean(pairs)), 4)}
    return report


def landmark_distances(original: np.ndarray, changed: np.ndarray, box) -> dict:
    """Table 6.2: mean pixel distance of dlib's 68 landmarks located on each image."""
    from facedeid.detection.dlib_models import DlibLandmarker
    if not hasattr(landmark_distances, "landmarker"):
        landmark_distances.landmarker = DlibLandmarker(68)
    points = [landmark_distances.landmarker.raw_points(image, box) for image in (original, changed)]
    error = np.linalg.norm(points[0] - points[1], axis=1)
    return {"landmarks": float(error.mean()), "eyes": float(error[36:48].mean()),
            "nose": float(error[27:36].mean()), "mouth": float(error[48:68].mean())}


def classic_reversals(original: np.ndarray, box) -> dict[str, np.ndarray]:
    """The book's Table 6.4 baselines on the face window: blur undone by a Wiener filter,
    pixelation by bilinear interpolation, noise by non-local means."""
    import cv2
    from skimage.restoration import wiener

    from facedeid.evaluation.quality import face_window
    rows, cols = face_window(box, original.shape)
    face = original[rows, cols]
    restored = {}
    sigma = 3.0
    blurred = cv2.GaussianBlur(face, (0, 0), sigma)
    size = int(6 * sigma) | 1
    kernel = cv2.getGaussianKernel(size, sigma)
    psf = kernel @ kernel.T
    restored["wiener_deblur"] = np.stack([
        np.clip(wiener(blurred[..., c] / 255.0, psf, balance=0.01) * 255, 0, 255)
        for c in range(3)], axis=2).astype(np.uint8)
    height, width = face.shape[:2]
    small = cv2.resize(face, (max(width // 8, 1), max(height // 8, 1)), interpolation=cv2.INTER_AREA)
    restored["pixelate_bilinear"] = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    noisy = np.clip(face.astype(np.float32) + np.random.default_rng(0).normal(0, 15, face.shape),
                    0, 255).astype(np.uint8)
    restored["noise_nlmeans"] = cv2.fastNlMeansDenoisingColored(noisy, None, 10, 10, 7, 21)
    return restored


def password_tables(faces, recognizers: dict, perceptual) -> dict:
    """Tables 6.1-6.4 on ``faces``: anonymize with a random password per face at each level,
    restore with the right password and with a wrong one."""
    import secrets

    import cv2
    import torch

    from facedeid.evaluation.quality import face_window, psnr, ssim
    from facedeid.evaluation.services import create_service
    from facedeid.methods.identity_edit import restore_image
    from facedeid.models.tensors import crops_to_tensor
    from facedeid.pipeline import Anonymizer

    images, boxes = [f[0] for f in faces], [f[1].box for f in faces]
    originals = embed_all(recognizers, images, boxes)
    thresholds = {name: r.threshold for name, r in recognizers.items()}
    report: dict = {"faces": len(faces)}

    def id_report(embedded: dict, below_is_success: bool) -> dict:
        out = {}
        for name, dist in distances(recognizers, originals, embedded).items():
            hit = dist < thresholds[name] if below_is_success else dist > thresholds[name]
            out[name] = {"distance": round(float(dist.mean()), 4), "rate": round(float(hit.mean()), 4)}
        return out

    def quality(reference: list[np.ndarray], changed: list[np.ndarray]) -> dict:
        values = {"psnr": [], "ssim": [], "mae": [], "lpips_faceres": []}
        for a, b in zip(reference, changed):
            values["psnr"].append(psnr(a, b))
            values["ssim"].append(ssim(a, b))
            values["mae"].append(float(np.abs(a.astype(float) - b).mean()))
            with torch.no_grad():
                pair = [crops_to_tensor(cv2.resize(x, (64, 64), interpolation=cv2.INTER_AREA)[None])
                        for x in (a, b)]
                values["lpips_faceres"].append(float(perceptual(*pair).mean()))
        return {k: round(float(np.mean(v)), 4) for k, v in values.items()}

    windows = [face_window(box, image.shape) for image, box in zip(images, boxes)]
    crop = lambda image, w: image[w[0], w[1]]  # noqa: E731
    for level, detail in PASSWORD_VARIANTS:
        variant = f"{level}_{detail}"
        deidentified, right, wrong, failures = [], [], [], 0
        landmark_rows, detection_inputs = [], []
        for image, face in faces:
            os.environ["FACEDEID_PASSWORD"] = secrets.token_urlsafe(12)  # a random password
            anonymizer = Anonymizer("password", {"level": level, "detail": detail},
                                    allow_weak=True)
            result = anonymizer.anonymize(image, faces=[face])
            sidecar = {"method": "password", "params": {}, "faces": [f.to_dict() for f in result.faces]}
            password = os.environ["FACEDEID_PASSWORD"].encode()
            restored, count, problems = restore_image(result.image, sidecar, password)
            guessed, _, _ = restore_image(result.image, sidecar, secrets.token_urlsafe(12).encode())
            failures += bool(problems)
            deidentified.append(result.image)
            right.append(restored)
            wrong.append(guessed)
            landmark_rows.append(landmark_distances(image, result.image, face.box))
        os.environ.pop("FACEDEID_PASSWORD", None)
        embedded = {key: embed_all(recognizers, batch, boxes)
                    for key, batch in (("deid", deidentified), ("right", right), ("wrong", wrong))}
        restored_faces = [crop(x, w) for x, w in zip(right, windows)]
        original_faces = [crop(x, w) for x, w in zip(images, windows)]
        detector = create_service("detection")
        detection = detector.compare(detector.predict(images, boxes),
                                     detector.predict(deidentified, boxes))["detection_rate"]
        report[variant] = {
            "table_6_1_deidentified": id_report(embedded["deid"], below_is_success=False),
            "table_6_2": {**{k: round(float(np.mean([r[k] for r in landmark_rows])), 3)
                             for k in landmark_rows[0]},
                          "face_pixel_mae": round(float(np.mean([
                              np.abs(crop(d, w).astype(float) - crop(o, w)).mean()
                              for d, o, w in zip(deidentified, images, windows)])), 3),
                          "detection_rate": round(float(detection), 4)},
            "table_6_3_wrong_password_sr": id_report(embedded["wrong"], below_is_success=False),
            "table_6_3_right_password_recovered": id_report(embedded["right"], below_is_success=True),
            "table_6_4_restored_quality": quality(original_faces, restored_faces),
            "restored_face_ssim_at_least_0_87": round(float(np.mean(
                [ssim(a, b) >= 0.87 for a, b in zip(original_faces, restored_faces)])), 4),
            "faces_not_restorable": failures,
        }
        print(json.dumps({variant: report[variant]}), flush=True)
    baselines = {name: [] for name in ("wiener_deblur", "pixelate_bilinear", "noise_nlmeans")}
    for image, box in zip(images, boxes):
        for name, face in classic_reversals(image, box).items():
            baselines[name].append(face)
    original_faces = [crop(x, w) for x, w in zip(images, windows)]
    report["table_6_4_classic_reversals"] = {name: quality(original_faces, faces_)
                                             for name, faces_ in baselines.items()}
    return report


def grid(faces, path: Path) -> None:
    """Originals | ε 0.57, 6, 1000, ∞ | password low/mid/high | restored right | restored wrong
    | password mid with detail=keep | its right restore."""
    import secrets

    from PIL import Image

    from facedeid.methods.identity_edit import restore_image
    from facedeid.pipeline import Anonymizer

    os.environ["FACEDEID_PASSWORD"] = BENCH_PASSWORD
    dp = [Anonymizer("identity_dp", {"eps": eps, "seed": 1}, allow_weak=True)
          for eps in (0.57, 6, 1000, INFINITE)]
    passwords = [Anonymizer("password", {"level": level}) for level in LEVELS]
    keep = Anonymizer("password", {"level": "mid", "detail": "keep"}, allow_weak=True)
    rows = []
    for image, face in faces:
        cells = [image] + [a.anonymize(image, faces=[face]).image for a in dp]
        for anonymizer in passwords:
            cells.append(anonymizer.anonymize(image, faces=[face]).image)
        result = passwords[1].anonymize(image, faces=[face])
        sidecar = {"method": "password", "faces": [f.to_dict() for f in result.faces]}
        cells.append(restore_image(result.image, sidecar, BENCH_PASSWORD.encode())[0])
        cells.append(restore_image(result.image, sidecar, secrets.token_bytes(8))[0])
        kept = keep.anonymize(image, faces=[face])
        cells.append(kept.image)
        cells.append(restore_image(kept.image, {"method": "password", "faces": [
            f.to_dict() for f in kept.faces]}, BENCH_PASSWORD.encode())[0])
        rows.append(np.hstack(cells))
    os.environ.pop("FACEDEID_PASSWORD", None)
    Image.fromarray(np.vstack(rows)).save(path)


def speed() -> dict:
    """Faces per second through the redraw (codes + generator) next to Private-Encoder."""
    import torch

    from facedeid.methods.identity_edit import IdentityRedrawer
    from facedeid.methods.private_encoder import DEFAULT_CHECKPOINT
    from facedeid.models.private_encoder import load_private_face_model

    redrawer = IdentityRedrawer()
    private, _ = load_private_face_model(DEFAULT_CHECKPOINT)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (96, 64, 64, 3), dtype=np.uint8)
    report = {"threads": torch.get_num_threads(), "load_before": os.getloadavg()}

    class Crop:  # the redrawer needs only pixels and the paste-back mask
        def __init__(self, pixels):
            self.pixels, self.mask = pixels, np.ones(pixels.shape[:2], np.float32)

    wrapped = [Crop(c) for c in crops]
    for batch in (1, 32):
        redrawer.batch_size = batch
        runs = {"identity_dp": lambda: redrawer.draw(redrawer.identity_codes(crops), wrapped),
                "private_encoder": lambda: private.anonymize(crops, 0.2, batch)}
        for name, run in runs.items():
            report[f"{name}_batch{batch}_faces_per_s"] = faces_per_second(run, len(crops))
    report["load_after"] = os.getloadavg()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/idp_paper"))
    parser.add_argument("--limit", type=int, default=300, help="first N test images")
    parser.add_argument("--password-faces", type=int, default=150,
                        help="faces for Tables 6.1-6.4 and the diversity measure")
    parser.add_argument("--cache-dir", default="runs/evalcache")
    parser.add_argument("--skip-eval", action="store_true", help="reuse OUT/sweep/results.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs/img/identity_dp_eps.png")
    parser.add_argument("--grid", type=Path, default=REPO / "docs/img/identity_dp_grid.jpg")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from facedeid.evaluation.recognizers import create_recognizer
    from facedeid.methods.identity_edit import DEFAULT_CHECKPOINT
    from facedeid.models.identity_generator import load_identity_generator
    from facedeid.models.perceptual import FaceresPerceptual

    _, payload = load_identity_generator(DEFAULT_CHECKPOINT)
    summary: dict = {"identity_space": payload["metrics"]["identity_space"],
                     "checkpoint_command": payload.get("command")}
    results_path = args.out / "sweep" / "results.json" if args.skip_eval \
        else run_evaluation(args.out, args.limit, args.cache_dir)
    table, rows = table_5(json.loads(results_path.read_text()))
    (args.out / "table_5.md").write_text(table + "\n")
    print(table, flush=True)
    faces = test_faces(args.password_faces)
    recognizers = {name: create_recognizer(name) for name in RECOGNIZERS}
    summary["diversity"] = diversity(faces[:40], recognizers["dlib"])
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(rows, summary["diversity"], args.plot)
    summary["password"] = password_tables(faces, recognizers, FaceresPerceptual())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    grid(faces[:6], args.grid)
    summary["speed"] = speed()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
