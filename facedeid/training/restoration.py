"""Train the restoration attacker and run the whole attack (issue 13, part 3).

The attacker (FaceCure's adaptive attacker applied to obfuscation; Newton et al.'s "parrot"
knowledge: the method is public) takes photos of people it knows — the 160 *train* identities
of ``celeba-id200/identity_split_disjoint.txt``, 4,800 images, never the 40 test identities —
de-identifies them itself with the public method and its parameters (a fresh seed, not the
publisher's), and trains a U-Net (:mod:`facedeid.models.restoration`) to map each
de-identified face back to the original:

    locate (FaceLocator + main_face, on the original) -> de-identify (the Anonymizer at that face,
    as `facedeid anonymize` does) -> align both images with the original's landmarks
    (FaceAligner, S x S) -> pair (de-identified crop, original crop)

Loss: L1 + ``perceptual_weight`` x L1 on frozen mini-Xception expression features (an
expression network, not a recognizer: see :mod:`facedeid.models.restoration`).

Caches under ``cache_dir`` (default ``~/.cache/facedeid/restoration``): face locations of the
originals (shared by every method), the pairs of each method/parameters/size, the attacker
checkpoint (keyed by method + validated parameters + size; resumed when asked for more
epochs), and the original test images' embeddings per recognizer. Every file is written to a
temporary name and renamed, so an interrupted run leaves no partial cache entry.

Run::

    facedeid attack restore --method mosaic --epochs 3
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..alignment import FaceAligner
from ..detection.base import Face
from ..errors import InvalidInputError
from ..io.images import write_bytes_atomic
from ..evaluation.restoration_attack import (DEFAULT_SIZE, FACE_FRACTION, Restorer,
                                             checkpoint_path, default_cache_dir,
                                             deidentify_with_faces, load_checkpoint,
                                             method_config, reidentification)
from ..models.restoration import (CHECKPOINT_FORMAT, DEFAULT_WIDTHS, SUPPORTED_SIZES,
                                  attack_key)

SPLIT_FILE = "identity_split_disjoint.txt"
#: Seed of the attacker's own de-identification of its training faces; the test outputs use
#: the publisher's seed (``seed`` of :func:`run_restoration_attack`), a different stream.
ATTACKER_PAIR_SEED = 1013
LOCATOR_KEY = "centerface|dlib68|second_chance|main_face"


# ---------------------------------------------------------------------------- data

@dataclass
class FaceSet:
    """Originals of one split with the face each one is about (images without one are listed
    in ``no_face`` and left out: a face that cannot be found cannot be paired or attacked)."""

    paths: list[Path]
    identities: list[str]
    faces: list[Face]
    no_face: list[str] = field(default_factory=list)

    def images(self) -> list[np.ndarray]:
        from ..io.images import read_image
        return [read_image(path).rgb for path in self.paths]


def read_split(root: str | os.PathLike, split: str, limit: int | None = None
               ) -> list[tuple[Path, str]]:
    """``[(image path, identity)]`` of ``split`` ("train"/"test") in ``identity_split_disjoint.txt``
    order; ``limit`` keeps the first N."""
    root = Path(root)
    split_file, identity_file = root / SPLIT_FILE, root / "identity_CelebA.txt"
    for path in (split_file, identity_file):
        if not path.is_file():
            raise InvalidInputError(f"{path} is missing; the restoration attack needs "
                                    "celeba-id200 with its identity-disjoint split")
    identities = dict(line.split() for line in identity_file.read_text().splitlines()
                      if line.strip())
    rows = []
    for line in split_file.read_text().splitlines():
        if not line.strip():
            continue
        name, which = line.split()
        if which == split:
            rows.append((root / "img_align_celeba" / name, identities[name]))
    if not rows:
        raise InvalidInputError(f"{split_file} lists no {split!r} images")
    return rows[:limit] if limit is not None else rows


def _atomic_save_npz(path: Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getbuffer())


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def locate_faces(rows: Sequence[tuple[Path, str]], cache_dir: Path, *, progress: bool = True
                 ) -> FaceSet:
    """Locate the main face of every original (CenterFace + second chance + dlib68 landmarks,
    the evaluator's settings), cached by file names and sizes."""
    from tqdm import tqdm

    from ..detection.locate import FaceLocator, main_face
    from ..io.images import read_image

    stats = [(path.name, path.stat().st_size) for path, _ in rows]
    cache = cache_dir / f"faces-{_digest(LOCATOR_KEY, stats)}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            found, boxes, landmarks = data["found"], data["boxes"], data["landmarks"]
    else:
        locator = FaceLocator("centerface", landmarks="dlib68")
        found = np.zeros(len(rows), bool)
        boxes = np.zeros((len(rows), 4), np.float32)
        landmarks = np.zeros((len(rows), 5, 2), np.float32)
        for index, (path, _) in enumerate(tqdm(rows, desc="locate faces", unit="img",
                                               disable=not progress, mininterval=2)):
            face = main_face(locator.locate(read_image(path).rgb))
            if face is not None:
                found[index], boxes[index], landmarks[index] = True, face.box, face.landmarks
        _atomic_save_npz(cache, found=found, boxes=boxes, landmarks=landmarks)
    kept = [i for i in range(len(rows)) if found[i]]
    return FaceSet([rows[i][0] for i in kept], [rows[i][1] for i in kept],
                   [Face(box=boxes[i], score=1.0, landmarks=landmarks[i]) for i in kept],
                   [rows[i][0].name for i in range(len(rows)) if not found[i]])


def aligned_pairs(originals: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                  faces: Sequence[Face], size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)``, each ``(N, S, S, 3) uint8``: the de-identified and the original
    face, aligned by the same transform (the original's landmarks)."""
    aligner = FaceAligner(size=size, face_fraction=FACE_FRACTION)
    inputs = np.stack([aligner.align(out, face).pixels for out, face in zip(outputs, faces)])
    targets = np.stack([aligner.align(img, face).pixels for img, face in zip(originals, faces)])
    return inputs, targets


def build_pairs(face_set: FaceSet, method: str, params: dict[str, Any], size: int,
                cache_dir: Path, *, seed: int = ATTACKER_PAIR_SEED, progress: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's training pairs for ``method``/``params`` (cached; see
    :func:`aligned_pairs`)."""
    key = attack_key(method, method_config(method, params), size)
    cache = cache_dir / f"pairs-{_digest(key, seed, [p.name for p in face_set.paths])}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return data["inputs"], data["targets"]
    originals = face_set.images()
    outputs, _ = deidentify_with_faces(originals, face_set.faces, method, params, seed=seed,
                                       progress=progress, desc="de-identify train")
    inputs, targets = aligned_pairs(originals, outputs, face_set.faces, size)
    _atomic_save_npz(cache, inputs=inputs, targets=targets)
    return inputs, targets


# ---------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    """Settings of one attacker's training (stored in the checkpoint)."""

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    perceptual_weight: float = 0.1
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    seed: int = 0
    #: share of the training *identities* held out to measure restoration (not trained on)
    holdout_fraction: float = 0.05


def holdout_split(identities: Sequence[str], fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, held-out indices)``: whole identities held out, so the held-out L1
    measures restoring people the network has not seen."""
    people = sorted(set(identities))
    rng = np.random.default_rng(seed)
    count = int(round(len(people) * fraction)) if fraction > 0 else 0
    held = set(rng.permutation(people)[:min(count, max(len(people) - 1, 0))].tolist())
    held_mask = np.array([identity in held for identity in identities], bool)
    return np.flatnonzero(~held_mask), np.flatnonzero(held_mask)


def _to_tensor(array: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 255.0


def l1_restoration_loss(model, inputs: np.ndarray, targets: np.ndarray, batch: int = 128) -> float:
    """Mean absolute error (0-1 scale) of ``model`` on the pairs; ``model=None`` measures the
    de-identified inputs themselves (what doing nothing gives)."""
    import torch

    if len(inputs) == 0:
        return float("nan")
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            x = _to_tensor(inputs[start:start + batch])
            y = _to_tensor(targets[start:start + batch])
            out = x if model is None else model(x)
            total += float((out - y).abs().mean()) * len(x)
    return total / len(inputs)


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def train_restorer(inputs: np.ndarray, targets: np.ndarray, identities: Sequence[str], key: str,
                   out_path: Path, config: TrainConfig | None = None, *, size: int,
                   perceptual=None, progress: bool = True, resume: bool = True) -> dict:
    """Train (or resume) the U-Net on the pairs and store it at ``out_path`` after each epoch.

    Args:
        inputs, targets: ``(N, S, S, 3) uint8`` de-identified / original aligned crops.
        identities: per pair, for the identity-held-out validation split.
        key: what the attacker is for (:func:`~facedeid.models.restoration.attack_key`); a
            stored checkpoint with another key is refused, never overwritten.
        perceptual: the perceptual loss module (default: the expression-feature loss when
            ``config.perceptual_weight > 0``).
        resume: continue a stored checkpoint with fewer epochs than asked; with as many or
            more, return it untouched.

    Returns:
        The checkpoint's metadata (history of losses included).
    """
    import torch
    from tqdm import tqdm

    from ..models.restoration import ExpressionFeatureLoss, RestorationUNet

    config = config or TrainConfig()
    if size not in SUPPORTED_SIZES:
        raise InvalidInputError(f"crop size must be one of {SUPPORTED_SIZES}, got {size}")
    train_idx, held_idx = holdout_split(identities, config.holdout_fraction, config.seed)
    torch.manual_seed(config.seed)
    model = RestorationUNet(config.widths)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    meta = {"format": CHECKPOINT_FORMAT, "key": key, "size": size, "face_fraction": FACE_FRACTION,
            "widths": list(config.widths), "config": asdict(config), "epochs_done": 0,
            "history": [], "train_pairs": int(len(train_idx)), "heldout_pairs": int(len(held_idx)),
            "heldout_l1_input": l1_restoration_loss(None, inputs[held_idx], targets[held_idx]),
            "perceptual": "mini-Xception FER2013 features (stem + 1 block), grey 64x64"
            if config.perceptual_weight > 0 else "none"}
    if resume and out_path.is_file():
        stored_model, stored_meta = load_checkpoint(out_path, key)
        stored = torch.load(out_path, map_location="cpu", weights_only=False)
        if stored_meta["epochs_done"] >= config.epochs:
            return stored_meta
        model.load_state_dict(stored_model.state_dict())
        optimizer.load_state_dict(stored["optimizer"])
        meta = stored_meta
        meta["config"] = asdict(config)
    if config.perceptual_weight > 0 and perceptual is None:
        perceptual = ExpressionFeatureLoss()
    for epoch in range(meta["epochs_done"], config.epochs):
        model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(train_idx)
        started, running, steps = time.time(), 0.0, 0
        bar = tqdm(range(0, len(order), config.batch_size),
                   desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=not progress, mininterval=2)
        for start in bar:
            batch = order[start:start + config.batch_size]
            x, y = _to_tensor(inputs[batch]), _to_tensor(targets[batch])
            restored = model(x)
            loss = (restored - y).abs().mean()
            if config.perceptual_weight > 0:
                loss = loss + config.perceptual_weight * perceptual(restored, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running, steps = running + loss.item(), steps + 1
            bar.set_postfix(loss=f"{running / steps:.4f}")
        model.eval()
        meta["epochs_done"] = epoch + 1
        meta["history"].append({
            "epoch": epoch + 1, "train_loss": running / max(steps, 1),
            "heldout_l1": l1_restoration_loss(model, inputs[held_idx], targets[held_idx]),
            "seconds": round(time.time() - started, 1)})
        _atomic_torch_save({"meta": meta, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict()}, out_path)
    return meta


# ---------------------------------------------------------------------------- the attack

def ensure_attacker(method: str, params: dict[str, Any], *, data_root: str | os.PathLike,
                    cache_dir: str | os.PathLike | None = None, size: int = DEFAULT_SIZE,
                    config: TrainConfig | None = None, limit: int | None = None,
                    progress: bool = True) -> tuple[Path, dict]:
    """Train the attacker for ``method``/``params`` on the train identities, or reuse the
    cached one (resumed when more epochs are asked for). Returns ``(checkpoint, meta)``."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = attack_key(method, method_config(method, params), size)
    path = checkpoint_path(cache_dir, key if limit is None else f"{key}|limit={limit}")
    face_set = locate_faces(read_split(data_root, "train", limit), cache_dir, progress=progress)
    inputs, targets = build_pairs(face_set, method, params, size, cache_dir, progress=progress)
    meta = train_restorer(inputs, targets, face_set.identities, key, path, config, size=size,
                          progress=progress)
    return path, meta


def _original_embeddings(recognizer, images, faces, face_set: FaceSet, cache_dir: Path):
    stats = [(p.name, p.stat().st_size) for p in face_set.paths]
    boxes = np.stack([f.box for f in faces]).round(2).tolist() if faces else []
    cache = cache_dir / f"embeddings-{recognizer.name}-{_digest(stats, boxes)}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return data["embeddings"]
    rows = [recognizer.embed(images[s:s + 64], [f.box for f in faces[s:s + 64]])
            for s in range(0, len(images), 64)]
    embeddings = np.concatenate(rows)
    _atomic_save_npz(cache, embeddings=embeddings)
    return embeddings


def run_restoration_attack(method: str, params: dict[str, Any], *, data_root: str | os.PathLike,
                           cache_dir: str | os.PathLike | None = None, size: int = DEFAULT_SIZE,
                           config: TrainConfig | None = None, limit: int | None = None,
                           test_limit: int | None = None,
                           recognizers: Sequence[str] = ("dlib", "faceres"),
                           seed: int = 0, progress: bool = True) -> dict:
    """Train or reuse the attacker, restore the test outputs, re-identify before and after.

    Args:
        limit: first N train images (default all 4,800).
        test_limit: first N test images (default all 1,200).
        seed: the publisher's seed for the test outputs (the attacker's pairs use another).

    Returns:
        A JSON-able report: settings, attacker training history, and per recognizer the rank-1 /
        SDR of the de-identified and of the restored test outputs against the original gallery.
    """
    from ..evaluation.recognizers import create_recognizer

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    config = config or TrainConfig()
    started = time.time()
    path, meta = ensure_attacker(method, params, data_root=data_root, cache_dir=cache_dir,
                                 size=size, config=config, limit=limit, progress=progress)
    trained_s = time.time() - started
    model, meta = load_checkpoint(path, meta["key"])
    restorer = Restorer(model, meta)
    test = locate_faces(read_split(data_root, "test", test_limit), cache_dir, progress=progress)
    originals = test.images()
    outputs, failures = deidentify_with_faces(originals, test.faces, method, params, seed=seed,
                                              progress=progress, desc="de-identify test")
    restored = restorer(outputs, test.faces)
    results = {}
    for name in recognizers:
        recognizer = create_recognizer(name)
        gallery = _original_embeddings(recognizer, originals, test.faces, test, cache_dir)
        results[name] = {
            "metric": recognizer.metric, "threshold": recognizer.threshold,
            **reidentification(recognizer, originals, test.faces, test.identities,
                               {"deidentified": outputs, "restored": restored},
                               original_embeddings=gallery)}
    return {
        "method": method, "params": method_config(method, params), "attack_key": meta["key"],
        "checkpoint": str(path), "size": size, "seed": seed,
        "train": {"images": meta["train_pairs"] + meta["heldout_pairs"],
                  "heldout_images": meta["heldout_pairs"],
                  "epochs": meta["epochs_done"], "history": meta["history"],
                  "heldout_l1_input": meta["heldout_l1_input"], "perceptual": meta["perceptual"],
                  "seconds_this_run": round(trained_s, 1)},
        "test": {"images": len(test.paths), "no_face": test.no_face, "method_failures": failures,
                 "identities": len(set(test.identities))},
        "recognizers": results,
        "seconds": round(time.time() - started, 1),
    }


def format_report(report: dict) -> str:
    """The before/after table ``facedeid attack restore`` prints."""
    train = report["train"]
    lines = [f"restoration attack on {report['attack_key']} — {report['test']['images']} test "
             f"faces of {report['test']['identities']} people; attacker trained "
             f"{train['epochs']} epoch(s) on {train['images'] - train['heldout_images']} faces "
             f"({train['heldout_images']} of held-out train identities measure it)",
             f"{'recognizer':<12}{'rank-1 deid':>12}{'rank-1 rest':>12}{'SDR deid':>10}"
             f"{'SDR rest':>10}"]
    for name, row in report["recognizers"].items():
        before, after = row["deidentified"], row["restored"]
        lines.append(f"{name:<12}{before['rank1']:>12.3f}{after['rank1']:>12.3f}"
                     f"{before['sdr']:>10.3f}{after['sdr']:>10.3f}")
    history = report["train"]["history"]
    if history:
        lines.append(f"held-out L1 (0-1): de-identified {report['train']['heldout_l1_input']:.4f}"
                     f" -> restored {history[-1]['heldout_l1']:.4f}")
    return "\n".join(lines)
