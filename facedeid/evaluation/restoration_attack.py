"""The adaptive restoration attack, seen from the evaluator: restore outputs, re-identify them.

An attacker who knows the public method trains a U-Net (:mod:`facedeid.models.restoration`) to
map de-identified faces back to originals, on people it already knows (the *train* identities
of ``identity_split_disjoint.txt``; :mod:`facedeid.training.restoration` does that). This
module is what the evaluator and ``facedeid attack restore`` share once an attacker exists:

* :func:`load_restorer` -> a callable ``(outputs, faces) -> restored images`` (the hook
  :class:`~facedeid.evaluation.runner.Evaluator` takes for its "restored" probe set);
* :func:`deidentify_with_faces` -> de-identified images at known faces, the same pipeline as
  ``facedeid anonymize`` (so the attacker trains on exactly what a user publishes);
* :func:`reidentification` -> rank-1 and SDR of probe sets against the original gallery.

The restorer aligns the face of a de-identified output with the *original's* landmarks (the
attacker knows where the face is, as every attacker in this project does), restores the
aligned crop and pastes it back at the same place with the aligner's feathered mask.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..alignment import FaceAligner, paste_back
from ..detection.base import Face
from ..errors import MissingWeightsError
from .privacy import identity_distance, rank1_identification_rate, successful_deidentification_rate

DEFAULT_SIZE = 64
#: Fraction of the aligned crop the face template fills (FaceAligner's default): the crop holds
#: the face region de-identification replaced plus a little context.
FACE_FRACTION = 0.8
RESTORE_BATCH = 64


def default_cache_dir() -> Path:
    """``$FACEDEID_CACHE/restoration`` or ``~/.cache/facedeid/restoration``."""
    base = os.environ.get("FACEDEID_CACHE") or Path.home() / ".cache" / "facedeid"
    return Path(base) / "restoration"


def method_config(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The method's validated parameters (defaults filled in, text converted), so a checkpoint
    key does not depend on how the parameters were spelled."""
    from ..methods import create_method

    return dict(create_method(method, allow_weak=True, **(params or {})).config)


def checkpoint_path(cache_dir: str | os.PathLike | None, key: str) -> Path:
    """Where the attacker for ``key`` (see :func:`~facedeid.models.restoration.attack_key`)
    is cached: a readable prefix plus a hash of the whole key."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key.split(":")[0])[:24]
    return directory / f"attacker-{safe}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def load_checkpoint(path: str | os.PathLike, expected_key: str):
    """``(model, meta)`` of a stored attacker; refused when trained for another key."""
    import torch

    from ..models.restoration import build_unet_from_meta, check_checkpoint_key

    stored = torch.load(Path(path), map_location="cpu", weights_only=False)
    meta = stored.get("meta", {}) if isinstance(stored, dict) else {}
    check_checkpoint_key(meta, expected_key, path)
    return build_unet_from_meta(meta, stored["model"]), meta


def _as_face(face_or_box) -> Face:
    if isinstance(face_or_box, Face):
        return face_or_box
    return Face(box=np.asarray(face_or_box, dtype=np.float32).reshape(4), score=1.0)


class Restorer:
    """A trained attacker as a callable: ``restorer(outputs, faces) -> restored images``.

    Args:
        model: the U-Net, eval mode.
        meta: its checkpoint metadata (crop size, face fraction, what it was trained for).
    """

    def __init__(self, model, meta: dict):
        self.model = model
        self.meta = meta
        self.key = meta["key"]
        self.aligner = FaceAligner(size=int(meta["size"]),
                                   face_fraction=float(meta["face_fraction"]))

    def restore_crops(self, crops: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3) uint8`` aligned de-identified crops -> restored, same shape."""
        import torch

        out = np.empty_like(crops)
        with torch.inference_mode():
            for start in range(0, len(crops), RESTORE_BATCH):
                batch = torch.from_numpy(crops[start:start + RESTORE_BATCH]).permute(0, 3, 1, 2)
                restored = self.model(batch.float() / 255.0)
                out[start:start + RESTORE_BATCH] = np.rint(
                    restored.permute(0, 2, 3, 1).numpy() * 255.0).clip(0, 255).astype(np.uint8)
        return out

    def __call__(self, outputs: Sequence[np.ndarray], faces: Sequence) -> list[np.ndarray]:
        """Restore the face of each de-identified output.

        Args:
            outputs: ``(H, W, 3) uint8`` RGB de-identified images (never modified).
            faces: per image, the face's :class:`~facedeid.detection.base.Face` located on the
                original (its landmarks align the crop; without them they are estimated from
                the box) or a ``(4,)`` box.

        Returns:
            New ``(H, W, 3) uint8`` images with the restored face pasted back.
        """
        if len(outputs) != len(faces):
            raise ValueError(f"{len(outputs)} outputs but {len(faces)} faces")
        crops = [self.aligner.align(image, _as_face(face)) for image, face in zip(outputs, faces)]
        if not crops:
            return []
        restored = self.restore_crops(np.stack([crop.pixels for crop in crops]))
        return [paste_back(image.copy(), crop, pixels)
                for image, crop, pixels in zip(outputs, crops, restored)]


def load_restorer(method: str, params: dict[str, Any] | None = None,
                  cache_dir: str | os.PathLike | None = None, *, size: int = DEFAULT_SIZE,
                  checkpoint: str | os.PathLike | None = None) -> Callable:
    """The trained restoration attacker for ``method`` with ``params`` (a :class:`Restorer`).

    Args:
        params: method parameters as given to ``create_method`` (text or numbers).
        cache_dir: where ``facedeid attack restore`` caches attackers (default
            :func:`default_cache_dir`).
        size: aligned crop side the attacker was trained at.
        checkpoint: a specific file instead of the cached one; refused when it was trained
            for another method, other parameters or another size.

    Raises:
        MissingWeightsError: no attacker trained for these settings yet.
        InvalidParameterError: the checkpoint was trained for other settings.
    """
    from ..models.restoration import attack_key

    key = attack_key(method, method_config(method, params), size)
    path = Path(checkpoint) if checkpoint is not None else checkpoint_path(cache_dir, key)
    if not path.is_file():
        raise MissingWeightsError(
            f"no restoration attacker for {key!r} at {path}; train it with `facedeid attack "
            f"restore --method {method}" + "".join(f" --param {k}={v}" for k, v in
                                                  (params or {}).items()) + "`")
    model, meta = load_checkpoint(path, key)
    return Restorer(model, meta)


def deidentify_with_faces(images: Sequence[np.ndarray], faces: Sequence[Face], method: str,
                          params: dict[str, Any] | None = None, *, seed: int | None = None,
                          expand: float = 1.3, feather: float = 0.1, mask_shape: str = "ellipse",
                          progress: bool = False, desc: str = "de-identify"):
    """De-identify each image at its known face with the project's pipeline.

    Weak parameters are accepted (measuring them is the point). A face the method fails on is
    counted as *not protected*: its output is the original image (never dropped).

    Returns:
        ``(outputs, failures)``: one ``(H, W, 3) uint8`` image per input, and
        ``[{"index": i, "error": text}]`` for the faces the method failed on.
    """
    from tqdm import tqdm

    from ..pipeline import Anonymizer

    anonymizer = Anonymizer(method=method, method_params=dict(params or {}), landmarks="box",
                            expand=expand, feather=feather, mask_shape=mask_shape, no_face="keep",
                            seed=seed, allow_weak=True, second_chance=False)
    outputs, failures = [], []
    for index, (image, face) in enumerate(tqdm(list(zip(images, faces)), desc=desc, unit="img",
                                               disable=not progress, mininterval=2)):
        copy = Face(box=face.box.copy(), score=face.score,
                    landmarks=None if face.landmarks is None else face.landmarks.copy())
        try:
            outputs.append(anonymizer.anonymize(image, faces=[copy]).image)
        except Exception as error:  # noqa: BLE001 - a method bug is one face not protected
            outputs.append(image.copy())
            failures.append({"index": index, "error": f"{type(error).__name__}: {error}"})
    return outputs, failures


def reidentification(recognizer, originals: Sequence[np.ndarray], faces: Sequence[Face],
                     identities: Sequence[str], probe_sets: dict[str, Sequence[np.ndarray]],
                     original_embeddings: np.ndarray | None = None,
                     batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Rank-1 and SDR of each probe set against the gallery of original images.

    Gallery = the originals (each probe's own original included, EEAE's protocol); a probe is
    embedded at its original's face box with landmarks located on the original
    (``reference_images``), so confusing the landmarker is not privacy.

    Returns:
        ``{probe set: {"rank1", "sdr", "mean_distance", "count"}}``.
    """
    boxes = [face.box for face in faces]

    def embed(images: Sequence[np.ndarray], reference: bool) -> np.ndarray:
        rows = []
        for start in range(0, len(images), batch_size):
            chunk = slice(start, start + batch_size)
            rows.append(recognizer.embed(list(images[chunk]), boxes[chunk],
                                         list(originals[chunk]) if reference else None))
        return np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)

    gallery = embed(originals, False) if original_embeddings is None else original_embeddings
    report = {}
    for name, images in probe_sets.items():
        if len(images) != len(originals):
            raise ValueError(f"probe set {name!r} has {len(images)} images for "
                             f"{len(originals)} originals")
        probes = embed(images, True)
        distances = identity_distance(gallery, probes, recognizer.metric)
        report[name] = {
            "rank1": rank1_identification_rate(probes, identities, gallery, identities,
                                               recognizer.metric),
            "sdr": successful_deidentification_rate(distances, recognizer.threshold),
            "mean_distance": float(np.mean(distances)),
            "count": int(len(images)),
        }
    return report


def evaluator_restorer(cache_dir: str | os.PathLike | None = None, *, size: int = DEFAULT_SIZE
                       ) -> Callable:
    """The :class:`~facedeid.evaluation.runner.Evaluator` hook: ``(spec, outputs, faces) ->
    restored images``, or ``None`` for a method no attacker has been trained for yet.

    Attackers are loaded once per method spec. Pass the originals' :class:`Face` objects as
    ``faces`` where available: the attacker was trained on crops aligned with the detector's
    landmarks, and bare boxes fall back to landmarks estimated from the box (a weaker attack).
    """
    loaded: dict[str, Restorer | None] = {}

    def restore(spec, outputs: Sequence[np.ndarray], faces: Sequence):
        name = getattr(spec, "title", None) or str(spec)
        if name not in loaded:
            try:
                loaded[name] = load_restorer(spec.method, dict(spec.params), cache_dir, size=size)
            except MissingWeightsError:
                loaded[name] = None
        restorer = loaded[name]
        return None if restorer is None else restorer(outputs, faces)

    return restore
