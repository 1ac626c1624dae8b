"""faceres as an attacker: :class:`FaceresRecognizer`, registered as ``"faceres"``.

A second strong recognizer next to dlib's (see :mod:`facedeid.models.faceres`): a MobileNet
trained on VGGFace2, run in PyTorch from the tfjs graph that ``make install`` fetches. Faces
are cropped at the *known* box (no landmarks, so ``reference_images`` is only checked for
shape), and each batch of crops is one forward pass.

Threshold: cosine *distance* ``1 - cos`` below :data:`COSINE_DISTANCE_THRESHOLD` means "same
person". It is the best-accuracy threshold on same/different pairs of the 160 *train*
identities of ``celeba-id200``'s ``identity_split_disjoint.txt``, CenterFace boxes, chosen
before the 40 test identities were scored (best there: cos 0.510, 94.6 % balanced accuracy on
40 train identities). On the 40 test identities it gives 93.3 % (best possible there: 93.3 % at
cos 0.498; AUC 0.977; dlib on the same pairs: 96.4 %). Gender (``male_probability >= 0.5``)
matches CelebA's ``Male`` on 98.1 % of those faces. Commands and details:
``benchmarks/faceres_verification.py``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .recognizers import FaceRecognizer, _as_box, _check_lengths

# cos >= 0.50 -> same person (best train-identity threshold, see the module docstring)
COSINE_DISTANCE_THRESHOLD = 0.50


class FaceresRecognizer(FaceRecognizer):
    """faceres 1024-D descriptors (cosine; same person below :attr:`threshold`).

    Args:
        batch_size: crops per forward pass.
        margin: fraction of the box side added around it before cropping.
        model_json: another copy of ``faceres.json`` (default: the installed, verified one).
    """

    metric = "cosine"
    threshold = COSINE_DISTANCE_THRESHOLD

    def __init__(self, batch_size: int = 32, margin: float | None = None,
                 model_json: str | None = None):
        from ..models.faceres import DEFAULT_MARGIN, load_faceres

        self.model = load_faceres(model_json)
        self.batch_size = int(batch_size)
        self.margin = DEFAULT_MARGIN if margin is None else float(margin)
        self.name = "faceres" if margin is None else f"faceres-m{self.margin:g}"

    def crops(self, images: Sequence[np.ndarray], boxes: Sequence,
              reference_images: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """``(N, 224, 224, 3)`` uint8 RGB crops as the network sees them."""
        from ..models.faceres import crop_faces

        _check_lengths(images, boxes, reference_images)
        if reference_images is not None:
            for image, reference in zip(images, reference_images):
                if image.shape != reference.shape:
                    raise ValueError("a reference image must have the same shape as its image")
        return crop_faces(images, [_as_box(face) for face in boxes], self.margin)

    def embed(self, images, boxes, reference_images=None) -> np.ndarray:
        crops = self.crops(images, boxes, reference_images)
        return self.model.analyze(crops, self.batch_size).descriptor.numpy().astype(np.float32)

    def attributes(self, images, boxes, reference_images=None) -> dict[str, np.ndarray]:
        """``{"male_probability": (N,), "age": (N,)}`` float32 from the same forward pass."""
        output = self.model.analyze(self.crops(images, boxes, reference_images), self.batch_size)
        return {"male_probability": output.male_probability.numpy().astype(np.float32),
                "age": output.age.numpy().astype(np.float32)}
