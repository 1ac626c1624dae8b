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
from .detection import Face, FaceDetector
from .detection.locate import LANDMARK_SOURCES, FaceLocator
from .errors import InvalidParameterError
from .methods import DeidMethod, FaceContext, create_method
from .methods.base import FALLBACK_METHOD

log = logging.getLogger(__name__)

NO_FACE_POLICIES = {
    "keep": "write the image unchanged (metadata still stripped) and warn",
    "skip": "write nothing for the image and warn",
    "obfuscate": "pixelate the whole image (methods that cannot cover a whole image fall back "
                 "to pixelate)",
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
        warnings: things a user should check by eye (second-chance detections, weak settings).
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
        detector_params: e.g. ``{"score_threshold": 0.4, "min_face_size": 20, "max_side": 1920}``
            (no ``max_side``: full resolution, tiled for big images).
        landmarks: ``"dlib68"`` / ``"dlib5"``: fill in landmarks a detector does not give;
            ``"box"``: estimate them from the box (no extra model).
        expand: the anonymized region is the face box scaled by this factor.
        feather: soft edge outside the region, as a fraction of its size.
        mask_shape: ``"ellipse"`` or ``"box"``.
        no_face: what to do with an image where no face is found, see :data:`NO_FACE_POLICIES`.
            Default: ``"keep"``, or ``"obfuscate"`` with ``expect_faces``.
        expect_faces: every image is known to hold a face (a face dataset): "no face found"
            means the detectors failed, so the whole image is obfuscated unless ``no_face``
            says otherwise.
        second_chance: try another detector, rotations and an upscaled pass before "no face".
        allow_weak: accept method parameters outside their de-identifying range (the result is
            reported as weak).
        seed: seed for stochastic methods (``None``: fresh randomness every call).
    """

    def __init__(self, method: str | DeidMethod = "mosaic", method_params: dict[str, Any] | None = None,
                 detector: str | FaceDetector | FaceLocator = "centerface",
                 detector_params: dict[str, Any] | None = None, landmarks: str = "dlib68",
                 expand: float = 1.3, feather: float = 0.1, mask_shape: str = "ellipse",
                 no_face: str | None = None, seed: int | None = None, *,
                 expect_faces: bool = False, second_chance: bool = True,
                 allow_weak: bool = False) -> None:
        no_face = no_face or ("obfuscate" if expect_faces else "keep")
        if no_face not in NO_FACE_POLICIES:
            raise ValueError(f"no_face must be one of {list(NO_FACE_POLICIES)}, got {no_face!r}")
        if mask_shape not in ("ellipse", "box"):
            raise ValueError("mask_shape must be 'ellipse' or 'box'")
        if landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"landmarks must be one of {', '.join(LANDMARK_SOURCES)}")
        if not (isinstance(expand, (int, float)) and np.isfinite(expand) and 1.0 <= expand <= 4.0):
            raise InvalidParameterError(
                f"expand must be a number from 1.0 to 4.0, got {expand!r}: below 1.0 part of the "
                "detected face would stay untouched")
        if not (isinstance(feather, (int, float)) and np.isfinite(feather) and 0 <= feather <= 1):
            raise InvalidParameterError(f"feather must be a number from 0 to 1, got {feather!r}")
        self.method = method if isinstance(method, DeidMethod) \
            else create_method(method, allow_weak=allow_weak, **(method_params or {}))
        if isinstance(detector, FaceLocator):
            self.locator = detector
        else:
            self.locator = FaceLocator(detector, detector_params, landmarks=landmarks,
                                       second_chance=second_chance)
        self.detector = self.locator.detector
        self.landmarks = landmarks
        self.expand, self.feather, self.mask_shape = expand, feather, mask_shape
        self.no_face = no_face
        self.expect_faces = expect_faces
        self.seed = seed
        self.aligner = FaceAligner(size=self.method.aligned_size) \
            if self.method.space == "aligned" else None
        self._fallback: DeidMethod | None = None

    @property
    def covers_whole_region(self) -> bool:
        """Whether the method replaces the whole region it is given (blindfold does not)."""
        return self.method.space == "box" and self.method.covers_region

    def fallback_method(self) -> DeidMethod:
        """The box method used where the chosen one cannot cover (see :data:`FALLBACK_METHOD`)."""
        if self._fallback is None:
            name, params = FALLBACK_METHOD
            self._fallback = create_method(name, **params)
        return self._fallback

    # -- stage 1: detect -------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image``, each with canonical landmarks (see :class:`FaceLocator`)."""
        return self.locator.locate(image)

    def complete_landmarks(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        """Fill in landmarks the detector did not give (in place; also returns ``faces``)."""
        return self.locator.complete_landmarks(image, faces)

    # -- stages 2-4: align, de-identify, paste back ----------------------------------------
    def anonymize(self, image: np.ndarray, faces: list[Face] | None = None) -> AnonymizationResult:
        """De-identify every face in ``image`` (detected unless ``faces`` is given)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
                or image.dtype != np.uint8:
            raise TypeError("expected an (H, W, 3) uint8 RGB array")
        faces = self.detect(image) if faces is None else self.complete_landmarks(image, faces)
        output = image.copy()
        coverage = np.zeros(image.shape[:2], np.float32)
        if not faces:
            return self._handle_no_face(output, coverage)
        if self.aligner is not None and self.method.cover_whole_box:
            self._cover_boxes(image, output, faces, coverage)
        crops = [self._crop(image, face) for face in faces]
        contexts = [self._context(face, index, image.shape[:2]) for index, face in enumerate(faces)]
        processed = self.method.apply_batch(crops, contexts)
        for crop, pixels in zip(crops, processed):
            paste_back(output, crop, np.asarray(pixels, dtype=np.uint8), coverage)
        for face, context in zip(faces, contexts):
            if context.notes:
                face.extra["method_notes"] = dict(context.notes)
        warnings = [f"face at {[round(float(v)) for v in face.box]} was found only by "
                    f"{face.extra['found_by']}; check it by eye"
                    for face in faces if "found_by" in face.extra]
        # Read after apply: some limits depend on the face size and are noted per face.
        if self.method.weak_reasons:
            warnings.append("weak: " + "; ".join(self.method.weak_reasons))
        return AnonymizationResult(output, faces, coverage, warnings=warnings)

    def _cover_boxes(self, image: np.ndarray, output: np.ndarray, faces: list[Face],
                     coverage: np.ndarray) -> None:
        """Whole-box coverage for aligned-crop methods.

        An aligned crop is a rotated square whose paste-back ellipse leaves the box's corners,
        the jaw and sometimes the forehead of the detected region untouched. The fallback
        method is pasted over the whole expanded box first; the method's own face then goes
        on top of it, so every pixel of the region is replaced by one or the other.
        """
        fallback = self.fallback_method()
        for index, face in enumerate(faces):
            crop, _ = box_crop(image, face, self.expand, self.feather, self.mask_shape)
            pixels = fallback.apply(crop, self._context(face, index, image.shape[:2]))
            paste_back(output, crop, np.asarray(pixels, dtype=np.uint8), coverage)

    def _crop(self, image: np.ndarray, face: Face) -> FaceCrop:
        if self.aligner is not None:
            return self.aligner.align(image, face)
        return box_crop(image, face, self.expand, self.feather, self.mask_shape)[0]

    def _context(self, face: Face, index: int, shape: tuple[int, int]) -> FaceContext:
        key = face.track_id if face.track_id is not None else index
        rng = np.random.default_rng(None if self.seed is None else [self.seed, key])
        return FaceContext(rng=rng, track_id=face.track_id, image_shape=shape)

    def _handle_no_face(self, output: np.ndarray, coverage: np.ndarray) -> AnonymizationResult:
        message = (f"no face found (detector {self.detector.name}"
                   + (", second chance included" if self.locator.second_chance else "")
                   + f"); policy '{self.no_face}'")
        if self.no_face != "obfuscate":
            action = "kept" if self.no_face == "keep" else "skipped"
            return AnonymizationResult(output, [], coverage, action, [message])
        height, width = output.shape[:2]
        whole = Face(box=[0, 0, width, height], score=0.0)
        whole.landmarks = estimate_landmarks_from_box(whole.box)
        method = self.method if self.covers_whole_region else self.fallback_method()
        crop, _ = box_crop(output, whole, expand=1.0, feather=0.0, shape="box")
        pixels = method.apply(crop, self._context(whole, 0, (height, width)))
        paste_back(output, crop, np.asarray(pixels, dtype=np.uint8), coverage)
        return AnonymizationResult(output, [], coverage, "obfuscated", [message])
