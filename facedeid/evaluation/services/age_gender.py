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
            from ..faceres_recognizer import FaceresRecognizer
            recognizer = FaceresRecognizer(batch_size=batch_size)
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
