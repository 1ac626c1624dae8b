"""Facial-expression service of the QM-VAE paper (Qiu et al., Appl. Sci. 2022, §3.2, §5).

Workflow of the paper's Fig. 1: Haar cascade on the gray image -> crop the face -> 64x64 gray ->
mini-Xception (:mod:`facedeid.models.mini_xception`) -> expression ``E(x) = argmax res(x)``
(Eq. 4). Utility is the *service quality loss* of Eq. 8, ``L_e = 0 if E(x) == E(z(x)) else 1``,
averaged over images (the "service quality loss rate" of Table 2), and broken down by the
original's expression as in Table 3.

Choices the paper leaves open, made here:

* ``crop="haar"`` (the paper's workflow): the cascade runs on the whole gray image; with a known
  box, the *largest Haar face overlapping it* (IoU >= ``min_iou``) is used, so a second face or a
  false positive elsewhere is ignored. When Haar finds no such face (common on heavily
  anonymized faces) the known box is used instead (as a square crop) and ``found`` is False —
  the image is still classified, so every image contributes to the loss rate, and ``found``
  lets a report show how often the paper's detector itself failed.
* ``crop="box"``: the known box directly, as a square crop around its centre (side = the
  longer box side), skipping Haar; isolates the classifier from detector failures.
* No known box: Haar's largest face; if none, the central square of the image, ``found=False``.
* Crops are resized with area interpolation when shrinking (anti-aliased) and bilinear when
  enlarging; windows crossing the image border are padded by edge replication.
"""
from __future__ import annotations

import cv2
import numpy as np

from ...models.mini_xception import EXPRESSIONS, INPUT_SIZE
from .base import ServiceEvaluator, ServiceOutput, box_iou, check_inputs, check_pair, rate

CROP_MODES = ("haar", "box")


def square_around(box: np.ndarray) -> np.ndarray:
    """The square ``(x0, y0, x1, y1)`` centred on ``box`` with side = its longer side."""
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) / 2
    return np.array([centre_x - half, centre_y - half, centre_x + half, centre_y + half],
                    dtype=np.float32)


def gray_crop(gray: np.ndarray, window: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """``(size, size) uint8`` resize of ``gray[window]``; parts outside the image edge-replicated."""
    height, width = gray.shape
    x0, y0, x1, y1 = [int(round(float(v))) for v in window]
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    pad = max(0, -x0, -y0, x1 - width, y1 - height)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    patch = gray[y0:y1, x0:x1]
    shrinking = patch.shape[0] > size or patch.shape[1] > size
    return cv2.resize(patch, (size, size),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def choose_haar_face(haar_boxes: np.ndarray, known_box: np.ndarray | None,
                     min_iou: float) -> np.ndarray | None:
    """Largest Haar box (overlapping ``known_box`` by IoU >= ``min_iou`` when given), or None."""
    haar_boxes = np.asarray(haar_boxes, dtype=np.float32).reshape(-1, 4)
    if known_box is not None and len(haar_boxes):
        haar_boxes = haar_boxes[box_iou(known_box, haar_boxes) >= min_iou]
    if not len(haar_boxes):
        return None
    areas = (haar_boxes[:, 2] - haar_boxes[:, 0]) * (haar_boxes[:, 3] - haar_boxes[:, 1])
    return haar_boxes[int(np.argmax(areas))]


class ExpressionService(ServiceEvaluator):
    """Seven-class expression recognition with the FER2013 mini-Xception (QM-VAE's service).

    Args:
        crop: ``"haar"`` (paper's workflow) or ``"box"`` (known box); see the module docstring.
        min_iou: overlap a Haar face needs with the known box to count as that face.
        batch_size: faces per network call.
        haar_kwargs: passed to :class:`facedeid.detection.haar.HaarDetector`.
    """

    name = "expression"
    label_names = list(EXPRESSIONS)

    def __init__(self, crop: str = "haar", min_iou: float = 0.2, batch_size: int = 256,
                 model=None, **haar_kwargs):
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
        from ...models.mini_xception import load_mini_xception

        self.crop = crop
        self.min_iou = float(min_iou)
        self.batch_size = int(batch_size)
        self.model = model if model is not None else load_mini_xception()
        self._haar_kwargs = haar_kwargs
        self._haar = None

    @property
    def haar(self):
        if self._haar is None:
            from ...detection.haar import HaarDetector
            self._haar = HaarDetector(**self._haar_kwargs)
        return self._haar

    def face_crops(self, images: list[np.ndarray], boxes: list) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 64, 64) uint8`` gray network inputs and ``(N,)`` bool found flags."""
        boxes = check_inputs(images, boxes)
        crops = np.zeros((len(images), INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
        found = np.zeros(len(images), dtype=bool)
        for index, (image, box) in enumerate(zip(images, boxes)):
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            window = None
            if self.crop == "box" and box is not None:
                window, found[index] = square_around(box), True
            else:
                haar_boxes = np.array([face.box for face in self.haar.detect(image)])
                chosen = choose_haar_face(haar_boxes, box, self.min_iou)
                if chosen is not None:
                    window, found[index] = chosen, True
                elif box is not None:
                    window = square_around(box)
            if window is None:  # nothing known and nothing found: the central square
                height, width = gray.shape
                side = min(height, width)
                window = np.array([(width - side) / 2, (height - side) / 2,
                                   (width + side) / 2, (height + side) / 2])
            crops[index] = gray_crop(gray, window)
        return crops, found

    def classify(self, gray_64: np.ndarray) -> np.ndarray:
        """``(N, 64, 64) uint8`` -> ``(N, 7)`` softmax probabilities (batched)."""
        import torch

        from ...models.mini_xception import preprocess_gray

        outputs = []
        with torch.no_grad():
            for start in range(0, len(gray_64), self.batch_size):
                batch = preprocess_gray(gray_64[start:start + self.batch_size])
                outputs.append(torch.softmax(self.model(batch), dim=1).numpy())
        if not outputs:
            return np.zeros((0, len(EXPRESSIONS)), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32)

    def predict(self, images: list[np.ndarray], boxes: list | None = None) -> ServiceOutput:
        crops, found = self.face_crops(images, boxes)
        probabilities = self.classify(crops)
        return ServiceOutput(labels=probabilities.argmax(axis=1).astype(np.int64),
                             probabilities=probabilities, found=found)

    def compare(self, original: ServiceOutput, anonymized: ServiceOutput) -> dict:
        """Eq. 8 averaged over images, overall and per original expression (Table 3 layout)."""
        count = check_pair(original, anonymized)
        lost = original.labels != anonymized.labels
        loss_rate = rate(lost)
        per_class, per_class_count = {}, {}
        for index, label in enumerate(self.label_names):
            of_class = original.labels == index
            per_class[label] = rate(lost[of_class])
            per_class_count[label] = int(of_class.sum())
        both_found = original.found & anonymized.found
        result = {
            "n_images": count,
            "service_loss_rate": loss_rate,
            "consistency": None if loss_rate is None else round(1.0 - loss_rate, 6),
            "per_class_loss_rate": per_class,
            "per_class_count": per_class_count,
            "found_rate_original": rate(original.found),
            "found_rate_anonymized": rate(anonymized.found),
            "service_loss_rate_both_found": rate(lost[both_found]),
        }
        if original.probabilities is not None and anonymized.probabilities is not None:
            # Total-variation distance between the two softmax vectors (paper Fig. 9's
            # "difference of the result values"), averaged over images.
            change = 0.5 * np.abs(original.probabilities - anonymized.probabilities).sum(axis=1)
            result["mean_probability_change"] = rate(change)
        return result
