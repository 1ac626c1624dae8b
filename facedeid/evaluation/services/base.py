"""What a *service evaluator* is: a downstream task run on the original and the anonymized face.

Utility of a de-identification is measured as how often a service gives the same answer on
the anonymized face as on the original (QM-VAE, Qiu et al. 2022, §5: Eq. 8 "service quality
loss"; EEAE, Liu et al.: attribute accuracy). Every evaluator has the same two steps:

1. :meth:`ServiceEvaluator.predict` on a list of full images plus the *known* face box of each
   (taken from the original, so both versions are judged at the same place), and
2. :meth:`ServiceEvaluator.compare` of the original's and the anonymized outputs, giving
   JSON-friendly numbers (``None`` where a rate is undefined, e.g. over zero images).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ...detection.base import iou_matrix
from ...errors import InvalidInputError


@dataclass
class ServiceOutput:
    """Per-image service results.

    Attributes:
        labels: expression ``(N,)`` int class index; attributes ``(N, K)`` bool; detection
            ``(N,)`` bool.
        probabilities: ``(N, K)`` float, or ``None`` where not applicable.
        found: ``(N,)`` bool: the evaluator found/processed the face itself (e.g. the Haar
            cascade found it, rather than falling back to the known box).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    found: np.ndarray

    def __len__(self) -> int:
        return len(self.found)


class ServiceEvaluator(ABC):
    """A downstream service whose answers should survive de-identification."""

    name: str = "service"
    label_names: list[str] = []

    @abstractmethod
    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray | None]) -> ServiceOutput:
        """Run the service on ``images`` (each ``(H, W, 3) uint8`` RGB).

        ``boxes[i]`` is the known face box ``(x0, y0, x1, y1)`` in ``images[i]`` (from the
        original image), or ``None`` when unknown.
        """

    @abstractmethod
    def compare(self, original: ServiceOutput, anonymized: ServiceOutput) -> dict:
        """Utility kept by the anonymization, as JSON-friendly numbers."""


def check_inputs(images: list[np.ndarray], boxes: list | None) -> list[np.ndarray | None]:
    """Validate ``images``/``boxes``; return the boxes as ``(4,) float32`` arrays or ``None``."""
    if boxes is None:
        boxes = [None] * len(images)
    if len(boxes) != len(images):
        raise InvalidInputError(f"got {len(images)} images but {len(boxes)} boxes; pass one box "
                                "(or None) per image")
    checked = []
    for index, (image, box) in enumerate(zip(images, boxes)):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
                or image.dtype != np.uint8:
            raise InvalidInputError(
                f"image {index}: expected an (H, W, 3) uint8 RGB array, got "
                f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
        if box is None:
            checked.append(None)
            continue
        box = np.asarray(box, dtype=np.float32).reshape(-1)
        if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] \
                or box[3] <= box[1]:
            raise InvalidInputError(f"image {index}: face box must be (x0, y0, x1, y1) with "
                                    f"x1 > x0 and y1 > y0, got {box.tolist()}")
        checked.append(box)
    return checked


def check_pair(original: ServiceOutput, anonymized: ServiceOutput) -> int:
    """Number of images; raise when the two outputs do not describe the same images."""
    if len(original) != len(anonymized) or original.labels.shape != anonymized.labels.shape:
        raise InvalidInputError(
            f"cannot compare outputs of different sizes: original {original.labels.shape}, "
            f"anonymized {anonymized.labels.shape}")
    return len(original)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` box with ``(M, 4)`` boxes, ``(M,)``."""
    return iou_matrix(np.asarray(box, np.float32)[None], boxes)[0]


def rate(values: np.ndarray) -> float | None:
    """Mean of a boolean/0-1 array as a float, ``None`` when empty (JSON has no NaN)."""
    return None if len(values) == 0 else round(float(np.mean(values)), 6)
