"""The surrogate CosFace network as an attacker: :class:`SurrogateFaceRecognizer` ("surrogate").

The network and its checkpoint live in :mod:`facedeid.models.surrogate_recognizer` (the
identity cloak back-propagates through it); this adapter gives it the evaluator's recognizer
interface. Faces are aligned as in training (:mod:`facedeid.training.recognizer`): the
five landmarks of the face the project's :class:`~facedeid.detection.locate.FaceLocator` finds
at the known box on the reference image (the original, when given), then ``FaceAligner(128)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .recognizers import FaceRecognizer
from .services.base import box_iou

#: A detection must overlap the known box this much to lend it its landmarks.
MIN_IOU = 0.3


class SurrogateFaceRecognizer(FaceRecognizer):
    """The surrogate behind the evaluator's recognizer interface (registered as ``"surrogate"``).

    Landmarks: of the faces the locator (CenterFace, threshold 0.3) finds on the reference
    image, those overlapping the known box by IoU > :data:`MIN_IOU`, the
    :func:`~facedeid.detection.locate.main_face` of them; with none, landmarks estimated from
    the box. The locator's second chance is off: the box is already known, and the estimate
    from it is the fallback training used too. Cosine distance; the threshold is the one picked
    on train-split pairs when the checkpoint was trained.
    """

    name = "surrogate"
    metric = "cosine"

    def __init__(self, checkpoint: str | Path | None = None):
        from ..alignment import FaceAligner
        from ..detection.locate import FaceLocator
        from ..models.surrogate_recognizer import load_surrogate_recognizer

        self.model = load_surrogate_recognizer(checkpoint)
        cosine_threshold = self.model.meta.get("metrics", {}).get("cosine_threshold", 0.3)
        self.threshold = 1.0 - float(cosine_threshold)
        self._locator = FaceLocator("centerface", {"score_threshold": 0.3}, landmarks="box",
                                    second_chance=False)
        self._aligner = FaceAligner(128)

    def _landmarks(self, reference: np.ndarray, box: np.ndarray) -> np.ndarray:
        from ..alignment import estimate_landmarks_from_box
        from ..detection.locate import main_face

        faces = self._locator.locate(reference)
        overlapping = []
        if faces:
            overlaps = box_iou(box, np.array([face.box for face in faces]))
            overlapping = [face for face, overlap in zip(faces, overlaps) if overlap > MIN_IOU]
        face = main_face(overlapping)
        return face.landmarks if face is not None else estimate_landmarks_from_box(box)

    def aligned(self, images, boxes, reference_images=None) -> np.ndarray:
        """``(N, 128, 128, 3)`` uint8 crops as the surrogate saw them in training."""
        from ..detection import Face

        references = images if reference_images is None else reference_images
        if len(images) != len(boxes) or len(references) != len(images):
            raise ValueError("images, boxes and reference images must have the same length")
        crops = []
        for image, reference, face in zip(images, references, boxes):
            box = np.asarray(getattr(face, "box", face), dtype=np.float32).reshape(4)
            points = self._landmarks(np.ascontiguousarray(reference), box)
            crops.append(self._aligner.align(image, Face(box=box, landmarks=points)).pixels)
        return np.stack(crops) if crops else np.zeros((0, 128, 128, 3), np.uint8)

    def embed(self, images, boxes, reference_images=None) -> np.ndarray:
        return self.model.embed(self.aligned(images, boxes, reference_images))
