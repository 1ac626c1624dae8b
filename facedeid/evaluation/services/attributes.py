"""Facial-attribute service: EEAE's multi-task "feature selection network" (Liu et al., seed 004).

EEAE judges a de-identification by how well face attributes survive it (its attribute
accuracy tables). Here a multi-task CNN (:class:`facedeid.models.attribute_net.AttributeNet`,
trained by :mod:`facedeid.training.attributes` on CelebA) predicts each attribute on the
original and on the anonymized image, and the utility kept is the per-attribute *agreement*
between the two (the original's prediction is the reference: the anonymization should not
change what the classifier sees, whether or not the classifier is right about the original).

Crops: :func:`facedeid.models.attribute_net.attribute_crop` from the *known* box, identical
for the original and the anonymized image. Without a box, the project's
:class:`~facedeid.detection.locate.FaceLocator` (CenterFace) finds the image's
:func:`~facedeid.detection.locate.main_face`; if it finds none, the whole image is used and
``found`` is False.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import MissingWeightsError
from .base import ServiceEvaluator, ServiceOutput, check_inputs, check_pair, rate

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "attributes_celeba.pt"
CHECKPOINT_FORMAT = "facedeid-attributes-v1"
TRAIN_COMMAND = ("python -m facedeid.training.attributes --out "
                 "facedeid/checkpoints/attributes_celeba.pt --epochs 12 --threads 1 --seed 0")


def load_attribute_model(path: str | Path | None = None):
    """``AttributeNet`` in eval mode from a checkpoint written by the training script."""
    import torch

    from ...models.attribute_net import AttributeNet

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise MissingWeightsError(
            f"attribute classifier checkpoint not found at {path}.\nTrain it with: "
            f"{TRAIN_COMMAND}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise MissingWeightsError(f"{path} is not a readable torch checkpoint ({error}).\n"
                                  f"Re-train it with: {TRAIN_COMMAND}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise MissingWeightsError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint.\n"
                                  f"Re-train it with: {TRAIN_COMMAND}")
    model = AttributeNet(checkpoint["attributes"], widths=tuple(checkpoint["widths"]))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise MissingWeightsError(f"{path} does not match the current AttributeNet ({error}).\n"
                                  f"Re-train it with: {TRAIN_COMMAND}") from error
    return model.eval()


class AttributeService(ServiceEvaluator):
    """Binary face attributes (default Male, Smiling, Big_Nose, Eyeglasses, Young).

    Args:
        checkpoint: ``.pt`` from :mod:`facedeid.training.attributes` (default: the shipped one).
        batch_size: crops per network call.
        crop: only ``"box"`` (accepted so every service takes the same ``crop=`` keyword; the
            attribute crop is always aligned from the known box, see the module docstring).
    """

    name = "attributes"

    def __init__(self, checkpoint: str | Path | None = None, batch_size: int = 256,
                 crop: str = "box"):
        if crop != "box":
            raise ValueError(f"the attribute service crops from the known box only (crop='box'), "
                             f"got crop={crop!r}")
        self.model = load_attribute_model(checkpoint)
        self.label_names = list(self.model.attributes)
        self.batch_size = int(batch_size)
        self._locator = None  # built on the first image without a known box

    def _locate(self, image: np.ndarray) -> np.ndarray | None:
        from ...detection.locate import FaceLocator, main_face

        if self._locator is None:  # the attribute crop needs the box only: no landmark model
            self._locator = FaceLocator("centerface", landmarks="box")
        face = main_face(self._locator.locate(image))
        return None if face is None else face.box

    def predict(self, images: list[np.ndarray], boxes: list | None = None) -> ServiceOutput:
        import torch

        from ...models.attribute_net import CROP_SIZE, attribute_crop
        from ...models.tensors import crops_to_tensor

        boxes = check_inputs(images, boxes)
        crops = np.zeros((len(images), CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
        found = np.zeros(len(images), dtype=bool)
        for index, (image, box) in enumerate(zip(images, boxes)):
            if box is None:
                box = self._locate(image)
            if box is None:
                height, width = image.shape[:2]
                box = np.array([0, 0, width, height], dtype=np.float32)
            else:
                found[index] = True
            crops[index] = attribute_crop(image, box)
        probabilities = np.zeros((len(images), len(self.label_names)), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                logits = self.model(crops_to_tensor(crops[start:start + self.batch_size]))
                probabilities[start:start + len(logits)] = torch.sigmoid(logits).numpy()
        return ServiceOutput(labels=probabilities > 0.5, probabilities=probabilities, found=found)

    def compare(self, original: ServiceOutput, anonymized: ServiceOutput) -> dict:
        """Per-attribute agreement of the anonymized predictions with the original's."""
        count = check_pair(original, anonymized)
        agree = original.labels == anonymized.labels
        accuracy = {name: rate(agree[:, k]) for k, name in enumerate(self.label_names)}
        return {
            "n_images": count,
            "attribute_accuracy": accuracy,
            "mean_attribute_accuracy": None if count == 0 else round(float(agree.mean()), 6),
        }
