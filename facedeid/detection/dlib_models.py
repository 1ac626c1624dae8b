"""dlib's HOG and CNN (MMOD) face detectors, and its 5- and 68-point landmark predictors.

Weights come from the ``face-recognition-models`` wheel (see :mod:`facedeid.assets`); the HOG
detector is built into dlib itself. Landmarks are converted to the canonical five points of
:mod:`facedeid.detection.base` so the rest of the pipeline never sees model-specific layouts.
"""
from __future__ import annotations

import numpy as np

from ..assets import asset_path
from .base import Face, FaceDetector


def _to_rect(box):
    import dlib
    x0, y0, x1, y1 = [int(round(float(v))) for v in box]
    return dlib.rectangle(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


class DlibHogDetector(FaceDetector):
    """dlib's HOG + linear SVM frontal detector.

    Args:
        upsample: times the image is doubled before scanning (finds faces under ~80 px at a
            cost of ~4x time per step).
        score_threshold: SVM margin; 0 is dlib's own default.
        max_side: longer side the image is scaled down to first (``None``: full resolution,
            tiled above ``tile_size``).
    """

    name = "dlib-hog"

    def __init__(self, score_threshold: float = 0.0, min_face_size: float = 0.0,
                 upsample: int = 1, max_side: int | None = None):
        super().__init__(score_threshold, min_face_size, max_side)
        import dlib
        self.upsample = int(upsample)
        self.smallest_face = 80 // (2 ** self.upsample)  # the HOG window is 80 px
        self._detector = dlib.get_frontal_face_detector()

    def _detect_raw(self, image: np.ndarray) -> list[Face]:
        rects, scores, _ = self._detector.run(image, self.upsample, min(self.score_threshold, 0.0))
        return [Face(box=np.array([r.left(), r.top(), r.right(), r.bottom()]), score=float(s))
                for r, s in zip(rects, scores)]


class DlibCnnDetector(FaceDetector):
    """dlib's MMOD CNN detector: accurate and slow on CPU (seconds per 720p frame).

    Used mainly as an independent reference detector in benchmarks.
    """

    name = "dlib-cnn"

    def __init__(self, score_threshold: float = 0.0, min_face_size: float = 0.0,
                 upsample: int = 0, max_side: int | None = 1280):
        super().__init__(score_threshold, min_face_size, max_side)
        import dlib
        self.upsample = int(upsample)
        self.smallest_face = 80 // (2 ** self.upsample)
        self._detector = dlib.cnn_face_detection_model_v1(str(asset_path("dlib_cnn_detector")))

    def _detect_raw(self, image: np.ndarray) -> list[Face]:
        found = self._detector(image, self.upsample)
        return [Face(box=np.array([d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()]),
                     score=float(d.confidence)) for d in found]


class DlibLandmarker:
    """Canonical five points (and optionally all 68) from a face box.

    Args:
        points: 68 (default: gives mouth corners, needed for a full alignment) or 5 (smaller,
            faster; its mouth points come back as NaN).
    """

    def __init__(self, points: int = 68):
        import dlib
        if points not in (5, 68):
            raise ValueError("dlib landmarks come in 5 or 68 points")
        self.points = points
        self._predictor = dlib.shape_predictor(
            str(asset_path("dlib_landmarks68" if points == 68 else "dlib_landmarks5")))

    def raw_points(self, image: np.ndarray, box) -> np.ndarray:
        """All ``(points, 2)`` model points for the face in ``box``."""
        shape = self._predictor(image, _to_rect(box))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def canonical5(self, image: np.ndarray, box) -> np.ndarray:
        """``(5, 2)`` canonical points (left eye, right eye, nose, mouth left, mouth right)."""
        pts = self.raw_points(image, box)
        if self.points == 68:
            eye_a, eye_b = pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)
            nose, mouth_a, mouth_b = pts[30], pts[48], pts[54]
        else:  # two corners per eye, then the base of the nose
            eye_a, eye_b = pts[0:2].mean(axis=0), pts[2:4].mean(axis=0)
            nose = pts[4]
            mouth_a = mouth_b = np.array([np.nan, np.nan], dtype=np.float32)
        left_eye, right_eye = (eye_a, eye_b) if eye_a[0] <= eye_b[0] else (eye_b, eye_a)
        return np.stack([left_eye, right_eye, nose, mouth_a, mouth_b]).astype(np.float32)
