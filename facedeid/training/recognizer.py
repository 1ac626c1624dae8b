"""Train the surrogate recognizer shipped as ``facedeid/checkpoints/surrogate_recognizer.pt``.

Command that produced the shipped checkpoint (at most 14 minutes of training on 2 CPU cores,
plus the one-off face alignment cache)::

    python -m facedeid.training.recognizer --threads 1 --out facedeid/checkpoints/surrogate_recognizer.pt

(``--threads 1`` was faster than 2 on the shared, oversubscribed 2-core machine.)

Data: ``../shared/data/celeba-id200`` with its identity-disjoint split
``identity_split_disjoint.txt``: all 30 photos of each of the 160 *train* people are trained on;
the 40 *test* people are never seen, because the recognizer is an attacker in the privacy
figures and those are measured on exactly these 40 people. Accuracy is therefore open-set:
leave-one-out rank-1 among the 1,200 test photos (each photo against the other 1,199) and
verification accuracy on balanced same/different test pairs (cosine threshold picked on train
pairs).

Loss: CosFace (large-margin cosine loss, Wang et al. CVPR 2018, Eq. 4) with s = 30, m = 0.35.

Faces are detected with CenterFace and aligned with :class:`facedeid.alignment.FaceAligner`
(128 px) once; the crops are cached in a ``.npz`` under ``/tmp`` (see
:func:`load_aligned_celeba_id200`), which the privacy benchmarks reuse.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "celeba-id200"
# "main": faces chosen by FaceLocator + main_face; caches written with the detector's first
# face under the old name are not reused.
DEFAULT_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "facedeid_celeba_id200_main_aligned128.npz"


@dataclass
class AlignedFaces:
    """Aligned crops of a face dataset.

    Attributes:
        crops: ``(N, S, S, 3)`` uint8 RGB aligned faces.
        identities: ``(N,)`` int identity labels.
        is_train: ``(N,)`` bool, True for the train split.
        names: ``(N,)`` file names.
        detected: ``(N,)`` bool, False where the detector failed and mean landmarks were used.
        boxes, landmarks: ``(N, 4)``, ``(N, 5, 2)`` face geometry in the original image.
    """

    crops: np.ndarray
    identities: np.ndarray
    is_train: np.ndarray
    names: np.ndarray
    detected: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray

    def subset(self, mask: np.ndarray) -> "AlignedFaces":
        return AlignedFaces(**{k: getattr(self, k)[mask] for k in self.__dataclass_fields__})


def load_aligned_celeba_id200(root: str | Path = DEFAULT_ROOT, size: int = 128,
                              cache: str | Path | None = DEFAULT_CACHE,
                              limit: int | None = None,
                              split_file: str = "identity_split.txt") -> AlignedFaces:
    """Locate (CenterFace, :class:`~facedeid.detection.locate.FaceLocator`), align
    (FaceAligner(size)) and cache every celeba-id200 face.

    ``split_file`` only sets ``is_train`` (the cache holds every face, in the order of
    ``identity_split.txt``); pass ``DISJOINT_SPLIT_FILE`` for the identity-disjoint split.

    The face of a photo is :func:`~facedeid.detection.locate.main_face`. Where even the
    locator's second chance finds no face, the mean landmarks of the found faces are used: all
    CelebA "align" photos put the eyes at the same place.
    """
    from tqdm import tqdm

    from ..alignment import FaceAligner
    from ..detection import Face
    from ..detection.locate import FaceLocator, main_face
    from ..errors import InvalidInputError
    from ..io.datasets import read_celeba_id200_index
    from ..io.images import read_image

    root = Path(root)
    if not (root / "identity_split.txt").is_file():
        raise InvalidInputError(f"celeba-id200 not found at {root} (needs identity_split.txt, "
                                "identity_CelebA.txt and img_align_celeba/)")
    if cache is not None and limit is None:
        cache = Path(str(cache).replace("aligned128", f"aligned{size}"))
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as data:
                faces = AlignedFaces(**{k: data[k] for k in AlignedFaces.__dataclass_fields__})
            return _with_split(faces, root, split_file)
    rows = read_celeba_id200_index(root)[:limit]
    locator = FaceLocator("centerface")
    aligner = FaceAligner(size)
    images, boxes, landmarks, detected = [], [], [], []
    for name, _, _ in tqdm(rows, desc="detecting celeba-id200", unit="img"):
        image = read_image(root / "img_align_celeba" / name).rgb
        face = main_face(locator.locate(image))
        images.append(image)
        if face is not None:
            boxes.append(face.box)
            landmarks.append(face.landmarks)
        else:
            boxes.append(np.full(4, np.nan, np.float32))
            landmarks.append(np.full((5, 2), np.nan, np.float32))
        detected.append(face is not None)
    boxes, landmarks, detected = np.array(boxes), np.array(landmarks), np.array(detected)
    if detected.any():
        boxes[~detected] = np.nanmean(boxes[detected], axis=0)
        landmarks[~detected] = np.nanmean(landmarks[detected], axis=0)
    crops = np.stack([aligner.align(image, Face(box=box, landmarks=points)).pixels
                      for image, box, points in zip(images, boxes, landmarks)])
    faces = AlignedFaces(crops=crops, identities=np.array([r[1] for r in rows]),
                         is_train=np.array([r[2] for r in rows]),
                         names=np.array([r[0] for r in rows]), detected=detected,
                         boxes=boxes.astype(np.float32), landmarks=landmarks.astype(np.float32))
    if cache is not None and limit is None:
        np.savez(cache, **{k: getattr(faces, k) for k in AlignedFaces.__dataclass_fields__})
    return _with_split(faces, root, split_file)


def _with_split(faces: AlignedFaces, root: Path, split_file: str) -> AlignedFaces:
    """``faces`` with ``is_train`` read from ``split_file`` (matched by file name)."""
    from ..io.datasets import read_celeba_id200_index

    if split_file == "identity_split.txt":
        return faces
    is_train = {name: train for name, _, train in read_celeba_id200_index(root, split_file)}
    faces.is_train = np.array([is_train[str(name)] for name in faces.names])
    return faces


# ----------------------------------------------------------------------------------------------
# Evaluation helpers (closed-set identification and verification on embeddings)

def rank1_accuracy(probe: np.ndarray, probe_ids: np.ndarray, gallery: np.ndarray,
                   gallery_ids: np.ndarray) -> float:
    """Fraction of probes whose most cosine-similar gallery embedding has the same identity."""
    nearest = np.argmax(probe @ gallery.T, axis=1)
    return float(np.mean(gallery_ids[nearest] == probe_ids))


def _pairs(ids: np.ndarray, rng: np.random.Generator, negatives_per_positive: int = 1):
    same = [(i, j) for i in range(len(ids)) for j in range(i + 1, len(ids)) if ids[i] == ids[j]]
    same = np.array(same)
    left = rng.integers(0, len(ids), len(same) * negatives_per_positive * 2)
    right = rng.integers(0, len(ids), len(left))
    keep = ids[left] != ids[right]
    different = np.stack([left[keep], right[keep]], 1)[:len(same) * negatives_per_positive]
    return same, different


def verification_accuracy(train_emb, train_ids, test_emb, test_ids, seed: int = 0):
    """Best cosine threshold on train-split pairs, accuracy on balanced test-split pairs."""
    rng = np.random.default_rng(seed)

    def scores(emb, ids):
        same, different = _pairs(ids, rng)
        return (np.sum(emb[same[:, 0]] * emb[same[:, 1]], 1),
                np.sum(emb[different[:, 0]] * emb[different[:, 1]], 1))

    train_same, train_diff = scores(train_emb, train_ids)
    candidates = np.linspace(-1, 1, 401)
    accuracy = [(np.mean(train_same >= t) + np.mean(train_diff < t)) / 2 for t in candidates]
    threshold = float(candidates[int(np.argmax(accuracy))])
    test_same, test_diff = scores(test_emb, test_ids)
    return float((np.mean(test_same >= threshold) + np.mean(test_diff < threshold)) / 2), threshold


# ----------------------------------------------------------------------------------------------
# Training

def _augment(batch, rng):
    """Random horizontal flip and a small random shift (+-2 px at 64 px) of uint8 crops."""
    import torch
    flips = torch.from_numpy(rng.random(len(batch)) < 0.5)
    batch = torch.where(flips.view(-1, 1, 1, 1), batch.flip(-1), batch)
    dx, dy = rng.integers(-2, 3, 2)
    return torch.roll(batch, shifts=(int(dy), int(dx)), dims=(2, 3))


def _progress_lr(progress: float, peak: float, warmup: float = 0.1) -> float:
    """Linear warm-up then cosine decay to 0 over ``progress`` in [0, 1]."""
    if progress < warmup:
        return peak * progress / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min((progress - warmup) / (1 - warmup), 1.0)))


def train(faces: AlignedFaces, epochs: int, batch_size: int, lr: float, seed: int,
          scale: float = 30.0, margin: float = 0.35, time_budget_s: float | None = None):
    """CosFace training of :class:`SurrogateRecognizer` on the train split.

    The learning-rate schedule (warm-up + cosine) runs on *progress* = the larger of
    step / (epochs * steps per epoch) and elapsed / ``time_budget_s``, so on a busy machine
    training still finishes its schedule within the budget (with fewer epochs, reported).

    Returns:
        ``(model, epochs_done)``.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from ..models.surrogate_recognizer import INPUT_SIZE, SurrogateRecognizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_faces = faces.subset(faces.is_train)
    classes, labels = np.unique(train_faces.identities, return_inverse=True)
    images = torch.from_numpy(train_faces.crops).permute(0, 3, 1, 2).float()
    # Resize once to the network's input size (forward() would do it every step).
    images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                           align_corners=False, antialias=True).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(labels)
    model = SurrogateRecognizer()
    class_weights = torch.nn.Parameter(torch.randn(len(classes), model.project.out_features) * 0.01)
    optimizer = torch.optim.SGD([*model.parameters(), class_weights], lr=lr, momentum=0.9,
                                weight_decay=5e-4, nesterov=True)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total_steps = epochs * steps_per_epoch
    start, step_count, progress, epoch = time.time(), 0, 0.0, 0
    while progress < 1.0 and epoch < epochs:
        model.train()
        order = torch.from_numpy(rng.permutation(len(images)))
        running, correct, seen = 0.0, 0, 0
        for step in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False):
            progress = step_count / total_steps
            if time_budget_s:
                progress = max(progress, (time.time() - start) / time_budget_s)
            if progress >= 1.0:
                break
            for group in optimizer.param_groups:
                group["lr"] = _progress_lr(progress, lr)
            index = order[step * batch_size:(step + 1) * batch_size]
            batch = _augment(images[index], rng).float() / 255.0
            embedding = model(batch)
            cosine = embedding @ F.normalize(class_weights, dim=1).T
            target = F.one_hot(labels[index], len(classes)).float()
            loss = F.cross_entropy(scale * (cosine - margin * target), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step_count += 1
            running += loss.item() * len(index)
            correct += int((cosine.argmax(1) == labels[index]).sum())
            seen += len(index)
        epoch += 1
        print(f"epoch {epoch}: loss {running / max(seen, 1):.3f}, train acc "
              f"{correct / max(seen, 1):.3f}, progress {progress:.2f}, "
              f"{time.time() - start:.0f}s", flush=True)
    model.eval()
    return model, epoch


def evaluate(model, faces: AlignedFaces) -> dict:
    """Open-set accuracy on the unseen test people: leave-one-out rank-1 among their photos
    and verification accuracy on their pairs (threshold picked on train pairs)."""
    train_faces, test_faces = faces.subset(faces.is_train), faces.subset(~faces.is_train)
    train_emb, test_emb = model.embed(train_faces.crops), model.embed(test_faces.crops)
    verification, threshold = verification_accuracy(train_emb, train_faces.identities,
                                                    test_emb, test_faces.identities)
    similarity = test_emb @ test_emb.T
    np.fill_diagonal(similarity, -np.inf)  # a photo is not its own gallery entry
    nearest = np.argmax(similarity, axis=1)
    return {"rank1_leave_one_out_test_people":
                float(np.mean(test_faces.identities[nearest] == test_faces.identities)),
            "verification_accuracy_test_pairs": verification,
            "cosine_threshold": threshold,
            "train_people": int(len(np.unique(train_faces.identities))),
            "test_people": int(len(np.unique(test_faces.identities)))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="checkpoint path (.pt)")
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="celeba-id200 root")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-budget", type=float, default=840.0,
                        help="seconds; the LR schedule ends (and training stops) by then")
    args = parser.parse_args(argv)

    import torch

    from ..models.surrogate_recognizer import save_surrogate_recognizer

    torch.set_num_threads(args.threads)
    from ..io.datasets import DISJOINT_SPLIT_FILE

    faces = load_aligned_celeba_id200(args.data, split_file=DISJOINT_SPLIT_FILE)
    print(f"{len(faces.crops)} faces, {int(faces.detected.sum())} detected by CenterFace", flush=True)
    model, epochs_done = train(faces, args.epochs, args.batch_size, args.lr, args.seed,
                               time_budget_s=args.time_budget)
    metrics = evaluate(model, faces)
    print(json.dumps(metrics, indent=2))
    meta = {"embedding_dim": model.project.out_features, "input_size": 64,
            "loss": "CosFace s=30 m=0.35", "data": "celeba-id200 identity-disjoint train people (160 ids x 30); "
                    "the 40 test people never seen",
            "aligner": "FaceAligner(128), CenterFace landmarks", "epochs": epochs_done, "max_epochs": args.epochs,
            "time_budget_s": args.time_budget,
            "seed": args.seed, "metrics": metrics,
            "command": "python -m facedeid.training.recognizer "
                       f"--threads {args.threads} --out {args.out}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_surrogate_recognizer(model, args.out, meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
