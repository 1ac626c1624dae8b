"""Face recognizers: the attacker of every privacy metric.

One interface, :class:`FaceRecognizer`: ``embed(images, boxes, reference_images=None)`` turns
faces at *known* boxes into ``(N, D) float32`` identity embeddings. The attacker knows where the
face is: alignment landmarks are located on ``reference_images`` (the originals) when given, so
an obfuscation that merely confuses the landmarker does not count as privacy.

Recognizers are built by name through a small open registry, so other modules (e.g. a PyTorch
surrogate recognizer) can add their own with :func:`register_recognizer`::

    recognizer = create_recognizer("dlib")
    embeddings = recognizer.embed(images, boxes)

:class:`EmbeddingCache` keeps embeddings of *original* images on disk, keyed by the file's
content hash, the recognizer and the face box, so repeated evaluations skip that work.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..assets import asset_path
from ..errors import InvalidInputError, MissingWeightsError
from ..registry import Registry


class FaceRecognizer(ABC):
    """Identity embeddings of faces at known locations.

    Attributes:
        name: registry name plus anything that changes the embedding (used in cache keys).
        metric: ``"euclidean"`` or ``"cosine"`` — how embeddings are compared.
        threshold: the model's own verification threshold on that distance (same person below).
    """

    name: str = "recognizer"
    metric: str = "euclidean"
    threshold: float = 0.6

    @abstractmethod
    def embed(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
              reference_images: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """``(N, D) float32`` embeddings.

        Args:
            images: ``(H, W, 3) uint8`` RGB images, one face each.
            boxes: ``(4,)`` face boxes ``x0, y0, x1, y1`` (a :class:`~facedeid.detection.Face`
                is accepted too) — where the face is, known from the original.
            reference_images: images to locate alignment landmarks on (default ``images``);
                pass the originals when embedding de-identified versions of them.
        """


def _as_box(face_or_box) -> np.ndarray:
    box = getattr(face_or_box, "box", face_or_box)
    box = np.asarray(box, dtype=np.float32).reshape(4)
    if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise InvalidInputError(f"invalid face box {box.tolist()}")
    return box


def _check_lengths(images, boxes, reference_images) -> None:
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
    if reference_images is not None and len(reference_images) != len(images):
        raise ValueError(f"{len(images)} images but {len(reference_images)} reference images")


class DlibRecognizer(FaceRecognizer):
    """dlib's 128-D ResNet (``dlib_face_recognition_resnet_model_v1``), Euclidean, threshold 0.6.

    Faces are aligned the way the model was trained: 5-point landmarks from dlib's shape
    predictor at the known box, then ``dlib.get_face_chip`` (150 px, padding 0.25), and the
    chips go through ``compute_face_descriptor`` in batches.

    dlib holds the GIL for a whole descriptor call (measured: the main thread stalls for
    every face), so threads cannot spread it over cores. Large calls (at least
    :data:`POOL_MIN_CHIPS` chips) therefore go to ``workers`` processes, each loading the
    network once; chips are cut in this process (cheap) and only they are sent.

    Args:
        batch_size: chips per ``compute_face_descriptor`` call.
        jitter: dlib's ``num_jitters`` (0 = one pass per chip).
        workers: descriptor processes for large calls (default: the machine's cores; 1 = all
            in this process).
    """

    name = "dlib"
    metric = "euclidean"
    threshold = 0.6

    def __init__(self, batch_size: int = 64, jitter: int = 0, workers: int | None = None):
        import dlib

        self._dlib = dlib
        self.batch_size = int(batch_size)
        self.jitter = int(jitter)
        self.workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
        self._pool = None
        if self.jitter:
            self.name = f"dlib-jitter{self.jitter}"
        self._predictor = dlib.shape_predictor(str(asset_path("dlib_landmarks5")))
        self._model = dlib.face_recognition_model_v1(str(asset_path("dlib_recognizer")))

    def _shape(self, image: np.ndarray, box: np.ndarray):
        x0, y0, x1, y1 = [int(round(float(v))) for v in box]
        rect = self._dlib.rectangle(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))
        return self._predictor(image, rect)

    def chips(self, images, boxes, reference_images=None) -> list[np.ndarray]:
        """``(150, 150, 3) uint8`` aligned chips, landmarks located on the reference images."""
        _check_lengths(images, boxes, reference_images)
        references = images if reference_images is None else reference_images
        out = []
        for image, reference, face in zip(images, references, boxes):
            if image.shape != reference.shape:
                raise ValueError("a reference image must have the same shape as its image")
            shape = self._shape(np.ascontiguousarray(reference), _as_box(face))
            out.append(self._dlib.get_face_chip(np.ascontiguousarray(image), shape, size=150,
                                                padding=0.25))
        return out

    def embed(self, images, boxes, reference_images=None) -> np.ndarray:
        chips = self.chips(images, boxes, reference_images)
        if not chips:
            return np.zeros((0, 128), np.float32)
        batches = [chips[start:start + self.batch_size]
                   for start in range(0, len(chips), self.batch_size)]
        if self.workers > 1 and len(chips) >= POOL_MIN_CHIPS:
            # smaller batches so that every worker gets a share
            share = -(-len(chips) // self.workers)
            batches = [chips[start:start + share] for start in range(0, len(chips), share)]
            described = list(self._worker_pool().map(_describe_chips, batches,
                                                     [self.jitter] * len(batches)))
        else:
            described = [_describe_chips(batch, self.jitter, self._model) for batch in batches]
        return np.concatenate(described).astype(np.float32).reshape(len(chips), 128)

    def _worker_pool(self):
        if self._pool is None:
            import atexit
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork, not spawn: spawn re-runs the caller's main module, which breaks scripts
            # without an `if __name__ == "__main__"` guard. The children only run dlib, never
            # the parent's ONNX Runtime or PyTorch thread pools.
            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("fork"),
                                             initializer=_load_worker_model,
                                             initargs=(str(asset_path("dlib_recognizer")),))
            atexit.register(self.close)
        return self._pool

    def close(self) -> None:
        """Stop the descriptor processes (they also stop when this process exits)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


#: calls with fewer chips stay in this process: starting the workers (~1-2 s) would not pay off
POOL_MIN_CHIPS = 128
_WORKER_MODEL = None


def _load_worker_model(model_path: str) -> None:
    global _WORKER_MODEL
    import dlib
    _WORKER_MODEL = dlib.face_recognition_model_v1(model_path)


def _describe_chips(chips: list[np.ndarray], jitter: int, model=None) -> np.ndarray:
    """``(N, 128)`` descriptors of aligned chips (in a worker: with the worker's model)."""
    model = _WORKER_MODEL if model is None else model
    rows = model.compute_face_descriptor(chips, num_jitters=jitter)
    return np.asarray(rows, dtype=np.float32).reshape(len(chips), 128)


class OnnxRecognizer(FaceRecognizer):
    """Any ONNX face-embedding model, with its preprocessing spelled out.

    Args:
        model_path: the ``.onnx`` file (e.g. an ArcFace export the user has).
        input_size: side of the square input (112 for ArcFace-style models).
        mean, std: per-channel normalisation on 0-255 values: ``(x - mean) / std``.
        channel_order: ``"RGB"`` or ``"BGR"``.
        layout: ``"NCHW"`` or ``"NHWC"``.
        align: ``True`` warps the five landmarks onto the ArcFace template
            (:class:`~facedeid.alignment.FaceAligner`, ``face_fraction=1``); ``False`` resizes
            the box crop.
        metric: ``"cosine"`` (embeddings L2-normalised) or ``"euclidean"``.
        threshold: verification threshold on the metric's distance.
    """

    metric = "cosine"

    def __init__(self, model_path: str | os.PathLike, input_size: int = 112,
                 mean: float | Sequence[float] = 127.5, std: float | Sequence[float] = 127.5,
                 channel_order: str = "RGB", layout: str = "NCHW", align: bool = True,
                 metric: str = "cosine", threshold: float = 0.6, name: str | None = None,
                 batch_size: int = 32):
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise MissingWeightsError(f"ONNX recognizer {path} not found; pass the path of a "
                                      "face-embedding .onnx model (--onnx-model)")
        if channel_order not in ("RGB", "BGR") or layout not in ("NCHW", "NHWC"):
            raise ValueError("channel_order must be RGB/BGR and layout NCHW/NHWC")
        if metric not in ("cosine", "euclidean"):
            raise ValueError("metric must be 'cosine' or 'euclidean'")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = int(input_size)
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        self.channel_order, self.layout, self.align = channel_order, layout, bool(align)
        self.metric, self.threshold = metric, float(threshold)
        self.batch_size = int(batch_size)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        self.name = name or f"onnx-{path.stem}-{digest}-{self.input_size}-{int(self.align)}"
        self._landmarker = None
        from ..alignment import FaceAligner
        self._aligner = FaceAligner(size=self.input_size, face_fraction=1.0)

    def _landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        if self._landmarker is None:
            from ..detection.dlib_models import DlibLandmarker
            self._landmarker = DlibLandmarker(68)
        return self._landmarker.canonical5(image, box)

    def preprocess(self, images, boxes, reference_images=None) -> np.ndarray:
        """The float32 input batch the model sees."""
        import cv2

        from ..detection import Face

        _check_lengths(images, boxes, reference_images)
        references = images if reference_images is None else reference_images
        crops = []
        for image, reference, face_or_box in zip(images, references, boxes):
            box = _as_box(face_or_box)
            if self.align:
                landmarks = getattr(face_or_box, "landmarks", None)
                if landmarks is None or not np.isfinite(landmarks).all():
                    landmarks = self._landmarks(np.ascontiguousarray(reference), box)
                crop = self._aligner.align(image, Face(box=box, landmarks=landmarks)).pixels
            else:
                x0, y0, x1, y1 = np.round(box).astype(int)
                window = image[max(y0, 0):max(y1, 1), max(x0, 0):max(x1, 1)]
                crop = cv2.resize(window, (self.input_size, self.input_size),
                                  interpolation=cv2.INTER_AREA)
            crops.append(crop)
        batch = np.stack(crops).astype(np.float32)
        if self.channel_order == "BGR":
            batch = batch[..., ::-1]
        batch = (batch - self.mean) / self.std
        if self.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def embed(self, images, boxes, reference_images=None) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, 0), np.float32)
        rows = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            refs = None if reference_images is None else reference_images[start:stop]
            batch = self.preprocess(images[start:stop], boxes[start:stop], refs)
            output = self.session.run(None, {self.input_name: batch})[0]
            rows.append(np.asarray(output, np.float32).reshape(len(batch), -1))
        embeddings = np.concatenate(rows)
        if self.metric == "cosine":
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return embeddings


# -- registry ----------------------------------------------------------------------------------
RECOGNIZERS: Registry[FaceRecognizer] = Registry("recognizer")


def register_recognizer(name: str, factory: Callable[..., FaceRecognizer], description: str) -> None:
    """Make ``create_recognizer(name, **kw)`` build ``factory(**kw)`` (open to other modules)."""
    RECOGNIZERS.register(name, factory, description)


def create_recognizer(name: str = "dlib", **kwargs) -> FaceRecognizer:
    """Build the recognizer ``name``; :class:`~facedeid.errors.UnknownNameError` if none."""
    return RECOGNIZERS.create(name, **kwargs)


register_recognizer("dlib", DlibRecognizer, "dlib 128-D ResNet (Euclidean, threshold 0.6)")
register_recognizer("onnx", OnnxRecognizer, "any ONNX embedding model given by path")


def _surrogate_recognizer(**kwargs) -> FaceRecognizer:  # lazy: keeps torch out of plain imports
    from .surrogate_recognizer import SurrogateFaceRecognizer
    return SurrogateFaceRecognizer(**kwargs)


register_recognizer("surrogate", _surrogate_recognizer,
                    "PyTorch CosFace CNN trained on celeba-id200 train ids (cosine)")


def _faceres_recognizer(**kwargs) -> FaceRecognizer:  # lazy: torch and the tfjs graph on use only
    from .faceres_recognizer import FaceresRecognizer
    return FaceresRecognizer(**kwargs)


register_recognizer("faceres", _faceres_recognizer,
                    "faceres MobileNet (VGGFace2, npm @vladmandic/human) 1024-D, cosine")


# -- cache of original embeddings --------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$FACEDEID_CACHE`` or ``~/.cache/facedeid`` (``embeddings/`` below it)."""
    base = os.environ.get("FACEDEID_CACHE") or Path.home() / ".cache" / "facedeid"
    return Path(base) / "embeddings"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: renamed copies share a cache entry, edited files do not."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings of original images on disk, one small ``.npz`` per (file, recognizer, locator).

    ``locator`` names how the face was found (detector and its settings), so a cached entry
    also returns the box it was computed at and a detector change never reuses stale entries.
    ``directory=None`` disables caching.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = None if directory is None else Path(directory)
        self.hits = self.misses = 0

    def _path(self, digest: str, recognizer: str, locator: str) -> Path:
        key = hashlib.sha256(f"{recognizer}|{locator}".encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in recognizer)[:40]
        return self.directory / f"{safe}-{key}" / digest[:2] / f"{digest}.npz"

    def get(self, digest: str, recognizer: str, locator: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(embedding, box)`` or ``None``."""
        if self.directory is None:
            return None
        path = self._path(digest, recognizer, locator)
        try:
            with np.load(path) as data:
                found = data["embedding"].astype(np.float32), data["box"].astype(np.float32)
            self.hits += 1
            return found
        except (OSError, KeyError, ValueError):
            self.misses += 1
            return None

    def put(self, digest: str, recognizer: str, locator: str, embedding: np.ndarray,
            box: np.ndarray) -> None:
        if self.directory is None:
            return
        path = self._path(digest, recognizer, locator)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(temporary, embedding=np.asarray(embedding, np.float32),
                 box=np.asarray(box, np.float32))
        os.replace(temporary, path)
