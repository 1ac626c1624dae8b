"""The pipeline: detect → align → de-identify → paste back.

:class:`Anonymizer` loads its models once and is then a pure function of the image
(``(H, W, 3) uint8`` RGB in, same out), so batch engines, the video pipeline and a web service
can share one instance.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .alignment import FaceAligner, FaceCrop, box_crop, estimate_landmarks_from_box, paste_back
from .detection import Face, FaceDetector, create_detector
from .methods import DeidMethod, FaceContext, create_method

log = logging.getLogger(__name__)

NO_FACE_POLICIES = {
    "keep": "write the image unchanged (metadata still stripped) and warn",
    "skip": "write nothing for the image and warn",
    "obfuscate": "de-identify the whole image (aligned-crop methods fall back to pixelate)",
}


@dataclass
class AnonymizationResult:
    """Output of :meth:`Anonymizer.anonymize`.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB result (a new array; the input is never modified).
        faces: faces found (or given), with landmarks.
        coverage: ``(H, W) float32`` in [0, 1], how strongly each pixel was replaced.
        action: ``"anonymized"``, or for an image without faces the no-face policy applied
            (``"kept"``, ``"skipped"``, ``"obfuscated"``).
    """

    image: np.ndarray
    faces: list[Face]
    coverage: np.ndarray
    action: str = "anonymized"
    warnings: list[str] = field(default_factory=list)


class Anonymizer:
    """Detect faces and de-identify each one with a registered method.

    Args:
        method: registered method name or a built :class:`DeidMethod`.
        method_params: parameters for the method (ignored when ``method`` is an instance).
        detector: detector name (see :data:`facedeid.detection.DETECTORS`) or an instance.
        detector_params: e.g. ``{"score_threshold": 0.4, "min_face_size": 20}``.
        landmarks: ``"dlib68"`` / ``"dlib5"``: fill in landmarks a detector does not give;
            ``"box"``: estimate them from the box (no extra model).
        expand: the anonymized region is the face box scaled by this factor.
        feather: soft edge outside the region, as a fraction of its size.
        mask_shape: ``"ellipse"`` or ``"box"``.
        no_face: what to do with an image where no face is found, see :data:`NO_FACE_POLICIES`.
        seed: seed for stochastic methods (``None``: fresh randomness every call).
    """

    def __init__(self, method: str | DeidMethod = "mosaic", method_params: dict[str, Any] | None = None,
                 detector: str | FaceDetector = "centerface",
                 detector_params: dict[str, Any] | None = None, landmarks: str = "dlib68",
                 expand: float = 1.3, feather: float = 0.1, mask_shape: str = "ellipse",
                 no_face: str = "keep", seed: int | None = None) -> None:
        if no_face not in NO_FACE_POLICIES:
            raise ValueError(f"no_face must be one of {list(NO_FACE_POLICIES)}, got {no_face!r}")
        if mask_shape not in ("ellipse", "box"):
            raise ValueError("mask_shape must be 'ellipse' or 'box'")
        if landmarks not in ("dlib68", "dlib5", "box"):
            raise ValueError("landmarks must be 'dlib68', 'dlib5' or 'box'")
        if expand < 1.0:
            raise ValueError("expand below 1.0 would leave part of the detected face untouched")
        self.method = method if isinstance(method, DeidMethod) \
            else create_method(method, **(method_params or {}))
        self.detector = detector if isinstance(detector, FaceDetector) \
            else create_detector(detector, **(detector_params or {}))
        self.landmarks = landmarks
        self.expand, self.feather, self.mask_shape = expand, feather, mask_shape
        self.no_face = no_face
        self.seed = seed
        self.aligner = FaceAligner(size=self.method.aligned_size) \
            if self.method.space == "aligned" else None
        self._landmarker = None

    # -- stage 1: detect -------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image``, each with canonical landmarks."""
        return self.complete_landmarks(image, self.detector.detect(image))

    def complete_landmarks(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        """Fill in landmarks the detector did not give (in place; also returns ``faces``)."""
        for face in faces:
            if face.has_full_landmarks:
                continue
            if self.landmarks == "box":
                face.landmarks = estimate_landmarks_from_box(face.box)
                continue
            if self._landmarker is None:
                from .detection.dlib_models import DlibLandmarker
                self._landmarker = DlibLandmarker(68 if self.landmarks == "dlib68" else 5)
            points = self._landmarker.canonical5(image, face.box)
            if face.landmarks is not None:  # keep the detector's points, fill only the gaps
                points = np.where(np.isfinite(face.landmarks), face.landmarks, points)
            face.landmarks = points
        return faces

    # -- stages 2-4: align, de-identify, paste back ----------------------------------------
    def anonymize(self, image: np.ndarray, faces: list[Face] | None = None) -> AnonymizationResult:
        """De-identify every face in ``image`` (detected unless ``faces`` is given)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise TypeError("expected an (H, W, 3) uint8 RGB array")
        faces = self.detect(image) if faces is None else self.complete_landmarks(image, faces)
        output = image.copy()
        coverage = np.zeros(image.shape[:2], np.float32)
        if not faces:
            return self._handle_no_face(output, coverage)
        crops = [self._crop(image, face) for face in faces]
        contexts = [self._context(face, index, image.shape[:2]) for index, face in enumerate(faces)]
        processed = self.method.apply_batch(crops, contexts)
        for crop, pixels in zip(crops, processed):
            paste_back(output, crop, np.asarray(pixels, dtype=np.uint8), coverage)
        return AnonymizationResult(output, faces, coverage)

    def _crop(self, image: np.ndarray, face: Face) -> FaceCrop:
        if self.aligner is not None:
            return self.aligner.align(image, face)
        return box_crop(image, face, self.expand, self.feather, self.mask_shape)[0]

    def _context(self, face: Face, index: int, shape: tuple[int, int]) -> FaceContext:
        key = face.track_id if face.track_id is not None else index
        rng = np.random.default_rng(None if self.seed is None else [self.seed, key])
        return FaceContext(rng=rng, track_id=face.track_id, image_shape=shape)

    def _handle_no_face(self, output: np.ndarray, coverage: np.ndarray) -> AnonymizationResult:
        message = f"no face found (detector {self.detector.name}); policy '{self.no_face}'"
        if self.no_face != "obfuscate":
            action = "kept" if self.no_face == "keep" else "skipped"
            return AnonymizationResult(output, [], coverage, action, [message])
        height, width = output.shape[:2]
        whole = Face(box=[0, 0, width, height], score=0.0)
        whole.landmarks = estimate_landmarks_from_box(whole.box)
        method = self.method if self.method.space == "box" else create_method("pixelate", size=16)
        crop, _ = box_crop(output, whole, expand=1.0, feather=0.0, shape="box")
        pixels = method.apply(crop, self._context(whole, 0, (height, width)))
        paste_back(output, crop, np.asarray(pixels, dtype=np.uint8), coverage)
        return AnonymizationResult(output, [], coverage, "obfuscated", [message])
