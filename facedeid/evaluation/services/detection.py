"""Face-detection service: is the anonymized face still found as a face by an *independent* detector?

A de-identified face that no detector finds breaks every downstream service (counting people,
tracking, expression analysis), so "still detectable" is the most basic utility. The detector
must differ from the one that located the faces for anonymization (default CenterFace),
otherwise the measure is biased towards it: the default is dlib's HOG detector.
A face counts as detected when some detection overlaps the known box with IoU >= ``min_iou``.
"""
from __future__ import annotations

import numpy as np

from .base import ServiceEvaluator, ServiceOutput, box_iou, check_inputs, check_pair, rate


class DetectionService(ServiceEvaluator):
    """Detection rate under a detector other than the anonymizer's.

    Args:
        detector: a :func:`facedeid.detection.create_detector` name, or a ready detector.
        min_iou: overlap with the known box needed to count a detection.
        detector_kwargs: passed to the detector's constructor.
    """

    name = "detection"
    label_names = ["face_detected"]

    def __init__(self, detector="dlib-hog", min_iou: float = 0.3, **detector_kwargs):
        from ...detection import create_detector

        self.detector = create_detector(detector, **detector_kwargs) \
            if isinstance(detector, str) else detector
        self.detector_name = getattr(self.detector, "name", str(detector))
        self.min_iou = float(min_iou)

    def predict(self, images: list[np.ndarray], boxes: list | None = None) -> ServiceOutput:
        """``labels == found``: a face overlapping the known box (any face when no box)."""
        boxes = check_inputs(images, boxes)
        detected = np.zeros(len(images), dtype=bool)
        for index, (image, box) in enumerate(zip(images, boxes)):
            faces = self.detector.detect(image)
            if box is None:
                detected[index] = bool(faces)
            elif faces:
                ious = box_iou(box, np.array([face.box for face in faces]))
                detected[index] = bool((ious >= self.min_iou).any())
        return ServiceOutput(labels=detected, probabilities=None, found=detected.copy())

    def compare(self, original: ServiceOutput, anonymized: ServiceOutput) -> dict:
        count = check_pair(original, anonymized)
        return {
            "n_images": count,
            "detector": self.detector_name,
            "detection_rate": rate(anonymized.labels),
            "original_detection_rate": rate(original.labels),
            "detection_rate_where_original_detected": rate(anonymized.labels[original.labels]),
        }
