"""OpenCV's Viola–Jones Haar cascade — the face detector of the QM-VAE paper (§3.2, §5.2).

The cascade XML ships only with ``opencv-python(-headless) < 5``. The score is the cascade's
level weight (higher is more confident; it is not a probability).
"""
from __future__ import annotations

import cv2
import numpy as np

from ..assets import asset_path
from .base import Face, FaceDetector


class HaarDetector(FaceDetector):
    """Haar cascade frontal-face detector.

    Args:
        scale_factor: image pyramid step (smaller: slower, finds more sizes).
        min_neighbors: overlapping hits needed to accept a face (higher: fewer false positives).
        score_threshold: minimum level weight.
    """

    name = "haar"

    def __init__(self, score_threshold: float = 0.0, min_face_size: float = 20.0,
                 scale_factor: float = 1.1, min_neighbors: int = 5):
        super().__init__(score_threshold, min_face_size)
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self._cascade = cv2.CascadeClassifier(str(asset_path("haar_frontalface")))
        if self._cascade.empty():
            raise RuntimeError("OpenCV could not load the Haar cascade")

    def _detect_raw(self, image: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        min_size = max(int(self.min_face_size), 1)
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size), outputRejectLevels=True)
        return [Face(box=np.array([x, y, x + w, y + h]), score=float(weight))
                for (x, y, w, h), weight in zip(boxes, np.ravel(weights))]
