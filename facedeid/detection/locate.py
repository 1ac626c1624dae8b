"""The one face locator: detection, a second chance before "no face", and landmarks.

Every layer that needs to know where faces are — the image pipeline, the evaluator, k-Same's
gallery, the training data loaders — goes through :class:`FaceLocator` (or
:func:`locate_faces`), so they all see the same faces and pick "the face" of an image by the
same rule (:func:`main_face`). The video pipeline uses the detector's batch API directly for
speed and this module's landmark step for the frames it anonymizes.

A second chance is what keeps a single detector's blind spot from becoming a published face:
when the main detector finds nothing, a different detector (dlib's HOG, which fails in other
ways than CenterFace's network) searches the image, then the main detector looks at the image
turned by 90°, 180° and 270° (scanned photos lie sideways) and at twice the size (a tight,
small crop such as a 89×109 CelebA thumbnail). Only when all of them find nothing does the
no-face policy apply. Faces found this way carry ``extra["found_by"]``.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .base import Face, FaceDetector, merge_faces, scale_face

LANDMARK_SOURCES = ("dlib68", "dlib5", "box")


def main_face(faces: list[Face]) -> Face | None:
    """The face an image is "about": the largest box (area), ties broken by the higher score.

    Used wherever one face per image is needed (evaluation, galleries, training data).
    """
    if not faces:
        return None
    return max(faces, key=lambda face: (round(face.width * face.height, 1), face.score))


class FaceLocator:
    """Find every face in an image and give each canonical five-point landmarks.

    Args:
        detector: detector name or instance (the main detector).
        detector_params: constructor arguments when ``detector`` is a name.
        landmarks: ``"dlib68"`` / ``"dlib5"`` fill in landmarks a detector does not give;
            ``"box"`` estimates them from the box (no extra model).
        second_chance: when the main detector finds nothing, try another detector, rotations
            and an upscaled pass before reporting "no face" (see the module docstring).
        fallback_detector: name of the second detector (default ``"dlib-hog"``; ``"centerface"``
            when the main detector is dlib's own HOG).
    """

    def __init__(self, detector: str | FaceDetector = "centerface",
                 detector_params: dict[str, Any] | None = None, *, landmarks: str = "dlib68",
                 second_chance: bool = True, fallback_detector: str | None = None) -> None:
        from . import create_detector

        if landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"landmarks must be one of {', '.join(LANDMARK_SOURCES)}")
        self.detector = detector if isinstance(detector, FaceDetector) \
            else create_detector(detector, **(detector_params or {}))
        self.landmarks = landmarks
        self.second_chance = bool(second_chance)
        if fallback_detector is None:
            fallback_detector = "centerface" if self.detector.name == "dlib-hog" else "dlib-hog"
        self.fallback_name = fallback_detector
        self._fallback: FaceDetector | None = None
        self._landmarker = None

    @property
    def name(self) -> str:
        return self.detector.name

    def locate(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` (best score first), each with landmarks."""
        faces = self.detector.detect(image)
        if not faces and self.second_chance:
            faces = self._second_chance(image)
        return self.complete_landmarks(image, faces)

    def complete_landmarks(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        """Fill in landmarks the detector did not give (in place; also returns ``faces``)."""
        from ..alignment import estimate_landmarks_from_box

        for face in faces:
            if face.has_full_landmarks:
                continue
            if self.landmarks == "box":
                face.landmarks = estimate_landmarks_from_box(face.box)
                continue
            if self._landmarker is None:
                from .dlib_models import DlibLandmarker
                self._landmarker = DlibLandmarker(68 if self.landmarks == "dlib68" else 5)
            points = self._landmarker.canonical5(image, face.box)
            if face.landmarks is not None:  # keep the detector's points, fill only the gaps
                points = np.where(np.isfinite(face.landmarks), face.landmarks, points)
            face.landmarks = points
        return faces

    # -- second chance -------------------------------------------------------------------
    def _second_chance(self, image: np.ndarray) -> list[Face]:
        found = self._other_detector(image)
        if found:
            return found
        found = self._rotated(image)
        if found:
            return found
        return self._upscaled(image)

    def _other_detector(self, image: np.ndarray) -> list[Face]:
        from . import create_detector

        if self._fallback is None:
            self._fallback = create_detector(self.fallback_name)
        faces = self._fallback.detect(image)
        for face in faces:
            face.landmarks = None  # its own landmarks (if any) are filled in by ours
            face.extra["found_by"] = self._fallback.name
        return faces

    def _rotated(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        faces: list[Face] = []
        for quarter_turns in (1, 3, 2):  # sideways scans first
            turned = np.ascontiguousarray(np.rot90(image, quarter_turns))
            for face in self.detector.detect(turned):
                faces.append(_unrotate(face, quarter_turns, width, height))
        for face in faces:
            face.extra["found_by"] = f"{self.detector.name} (rotated)"
        return merge_faces(faces)

    def _upscaled(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        if max(height, width) * 2 > 4096:
            return []
        bigger = cv2.resize(image, (width * 2, height * 2), interpolation=cv2.INTER_CUBIC)
        faces = [scale_face(face, 0.5) for face in self.detector.detect(bigger)]
        for face in faces:
            face.extra["found_by"] = f"{self.detector.name} (2x)"
        return faces


def _unrotate(face: Face, quarter_turns: int, width: int, height: int) -> Face:
    """Map a face found on ``np.rot90(image, quarter_turns)`` back to the image's pixels.

    ``width, height`` are the upright image's. Landmarks are dropped: after a turn their
    left/right order no longer matches the upright image, and the landmark step recomputes them.
    """
    x0, y0, x1, y1 = face.box
    xs, ys = np.array([x0, x1], np.float32), np.array([y0, y1], np.float32)
    if quarter_turns == 1:    # counter-clockwise: upright (x, y) -> turned (y, W - x)
        xs, ys = width - ys, xs
    elif quarter_turns == 2:  # upside down
        xs, ys = width - xs, height - ys
    elif quarter_turns == 3:  # clockwise: upright (x, y) -> turned (H - y, x)
        xs, ys = ys, height - xs
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    face.box = np.clip(box, 0, [width, height, width, height]).astype(np.float32)
    face.landmarks = None
    return face


def locate_faces(image: np.ndarray, detector: str | FaceDetector = "centerface", **options: Any
                 ) -> list[Face]:
    """Convenience: faces in one image with a locator built for this call.

    Build a :class:`FaceLocator` once and call :meth:`~FaceLocator.locate` when locating in
    many images (models load once).
    """
    return FaceLocator(detector, **options).locate(image)


__all__ = ["FaceLocator", "locate_faces", "main_face", "LANDMARK_SOURCES"]
