"""Age and gender service: faceres's own heads, original vs de-identified face.

Many uses of released faces (audience statistics, demographic fairness audits) need gender and
an age estimate more than identity, so a de-identification that keeps them keeps that utility.
The heads are the gender (sigmoid) and age (100-way softmax, expected value) outputs of the
faceres network (:mod:`facedeid.models.faceres`, trained by its author on VGGFace2/UTKFace, not
here), read at the *known* box of the original exactly as the ``faceres`` recognizer crops it.

Utility kept: **gender agreement** (both sides of ``male_probability >= 0.5`` the same) and the
**mean absolute age difference** in years between the original's estimate and the output's (the
original's prediction is the reference, whether or not it is right about the person).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .base import ServiceEvaluator, ServiceOutput, check_inputs, check_pair, rate


@dataclass
class AgeGenderOutput(ServiceOutput):
    """``labels``: ``(N,)`` bool male; ``probabilities``: ``(N, 1)`` male probability;
    ``age``: ``(N,)`` float32 expected age in years."""

    age: np.ndarray | None = None


class AgeGenderService(ServiceEvaluator):
    """Gender and age from faceres at the known box.

    Args:
        recognizer: a ready :class:`~facedeid.evaluation.faceres_recognizer.FaceresRecognizer`
            (the evaluator passes its attacker's, so the network loads once); default: a new one.
        batch_size: crops per forward pass.
    """

    name = "age_gender"
    label_names = ["male"]

    def __init__(self, recognizer=None, batch_size: int = 32):
        if recognizer is None:
            recognizer = faceres_with_heads(batch_size=batch_size)
        self.recognizer = recognizer

    def predict(self, images: list[np.ndarray], boxes: list | None = None) -> AgeGenderOutput:
        """Boxes are required: faceres crops at the known box (no detector of its own)."""
        boxes = check_inputs(images, boxes)
        if any(box is None for box in boxes):
            raise ValueError("the age_gender service needs the known face box of every image")
        if not images:
            empty = np.zeros(0, np.float32)
            return AgeGenderOutput(np.zeros(0, bool), empty.reshape(0, 1), np.zeros(0, bool), empty)
        heads = self.recognizer.attributes(images, boxes)
        male = np.asarray(heads["male_probability"], np.float32).reshape(-1)
        return AgeGenderOutput(labels=male >= 0.5, probabilities=male[:, None],
                               found=np.ones(len(images), dtype=bool),
                               age=np.asarray(heads["age"], np.float32).reshape(-1))

    def compare(self, original: AgeGenderOutput, anonymized: AgeGenderOutput) -> dict:
        """Gender agreement, age difference (mean absolute, years) and the mean ages."""
        count = check_pair(original, anonymized)
        age_change = np.abs(np.asarray(original.age, np.float64)
                            - np.asarray(anonymized.age, np.float64))
        return {
            "n_images": count,
            "gender_agreement": rate(original.labels == anonymized.labels),
            "age_mean_abs_difference": None if count == 0 else round(float(age_change.mean()), 4),
            "age_mean_original": None if count == 0 else round(float(np.mean(original.age)), 4),
            "age_mean_anonymized": None if count == 0 else round(float(np.mean(anonymized.age)), 4),
        }


def _crop_digest(crop: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(crop).tobytes(), digest_size=16).digest()


def faceres_with_heads(**kwargs):
    """A ``faceres`` attacker that also keeps the heads of every crop it embeds (see below)."""
    from ..faceres_recognizer import FaceresRecognizer

    class FaceresWithHeads(FaceresRecognizer):
        """The ``faceres`` recognizer, remembering gender/age of the crops it has embedded.

        One forward pass gives the descriptor and both heads, so when the evaluator runs
        faceres as an attacker *and* this service on the same faces, the service reads the
        heads of the attacker's pass (keyed by the crop's content) instead of running the
        network a second time. Same name and embeddings as ``faceres``.
        """

        def __init__(self, **options):
            super().__init__(**options)
            self._heads: dict[bytes, tuple[float, float]] = {}

        def _analyze(self, crops: np.ndarray):
            output = self.model.analyze(crops, self.batch_size)
            male = output.male_probability.numpy().astype(np.float32)
            age = output.age.numpy().astype(np.float32)
            if len(self._heads) > 200_000:  # bound memory on very long runs
                self._heads.clear()
            for crop, m, a in zip(crops, male, age):
                self._heads[_crop_digest(crop)] = (float(m), float(a))
            return output, male, age

        def embed(self, images, boxes, reference_images=None) -> np.ndarray:
            output, _, _ = self._analyze(self.crops(images, boxes, reference_images))
            return output.descriptor.numpy().astype(np.float32)

        def attributes(self, images, boxes, reference_images=None) -> dict[str, np.ndarray]:
            crops = self.crops(images, boxes, reference_images)
            digests = [_crop_digest(crop) for crop in crops]
            missing = [i for i, d in enumerate(digests) if d not in self._heads]
            if missing:
                self._analyze(crops[missing])
            heads = np.array([self._heads[d] for d in digests], np.float32).reshape(-1, 2)
            return {"male_probability": heads[:, 0], "age": heads[:, 1]}

    return FaceresWithHeads(**kwargs)
