"""What every face detector returns, and the interface it implements.

Coordinates are image pixels, ``x`` right and ``y`` down, as floats. Landmarks always use the
*canonical five points* in this order, whatever model produced them:

    0 left eye centre, 1 right eye centre, 2 nose tip, 3 left mouth corner, 4 right mouth corner

where "left" means the image's left (the subject's right eye for a frontal face). A point the
source model does not give is ``NaN`` (dlib's 5-point model has no mouth corners).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: ``(4,)`` float32 ``x0, y0, x1, y1``.
        score: detector confidence (its own scale; 1.0 for detectors without one).
        landmarks: ``(5, 2)`` float32 canonical points, or ``None`` before landmarking.
        track_id: identity of the face across video frames (``None`` for still images).
    """

    box: np.ndarray
    score: float = 1.0
    landmarks: np.ndarray | None = None
    track_id: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2],
                        dtype=np.float32)

    @property
    def has_full_landmarks(self) -> bool:
        return self.landmarks is not None and bool(np.isfinite(self.landmarks).all())

    def to_dict(self) -> dict:
        """JSON-friendly form (used by sidecars and the video box export)."""
        out = {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4)}
        if self.landmarks is not None:
            out["landmarks"] = {name: (None if not np.isfinite(point).all()
                                       else [round(float(point[0]), 2), round(float(point[1]), 2)])
                                for name, point in zip(LANDMARK_NAMES, self.landmarks)}
        if self.track_id is not None:
            out["track_id"] = int(self.track_id)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Face":
        landmarks = data.get("landmarks")
        if isinstance(landmarks, dict):
            landmarks = np.array([landmarks.get(n) if landmarks.get(n) is not None else [np.nan, np.nan]
                                  for n in LANDMARK_NAMES], dtype=np.float32)
        return cls(box=data["box"], score=float(data.get("score", 1.0)), landmarks=landmarks,
                   track_id=data.get("track_id"))


class FaceDetector(ABC):
    """A face detector: ``(H, W, 3) uint8 RGB`` image in, list of :class:`Face` out.

    Subclasses implement :meth:`_detect_raw`; the base class applies the knobs every detector
    shares (score threshold, minimum face size) so they mean the same for all of them.
    """

    name: str = "detector"
    gives_landmarks: bool = False

    def __init__(self, score_threshold: float = 0.5, min_face_size: float = 0.0) -> None:
        self.score_threshold = float(score_threshold)
        self.min_face_size = float(min_face_size)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` sorted by score, best first."""
        _check_rgb(image)
        faces = [face for face in self._detect_raw(image)
                 if face.score >= self.score_threshold
                 and min(face.width, face.height) >= self.min_face_size]
        return sorted(faces, key=lambda face: -face.score)

    @abstractmethod
    def _detect_raw(self, image: np.ndarray) -> list[Face]:
        """All candidate faces, before the shared threshold and size filters."""


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
            or image.dtype != np.uint8:
        raise TypeError("expected an (H, W, 3) uint8 RGB array, got "
                        f"{getattr(image, 'shape', type(image))} {getattr(image, 'dtype', '')}")


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip an ``x0, y0, x1, y1`` box to the image."""
    return np.array([np.clip(box[0], 0, width), np.clip(box[1], 0, height),
                     np.clip(box[2], 0, width), np.clip(box[3], 0, height)], dtype=np.float32)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of boxes kept by greedy IoU suppression, best score first (vectorised)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = boxes.T
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores)
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        inter_w = np.maximum(0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]))
        inter_h = np.maximum(0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]))
        inter = inter_w * inter_h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, dtype=np.int64)
