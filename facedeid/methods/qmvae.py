"""QM-VAE as a registered method: fuse N classic de-identifications with a trained VQ-VAE.

Qiu et al., Appl. Sci. 2022 (seed 000): §3.1 (the input operators, Eq. 1-3 + cartoon), §4.2
(the multi-input VQ-VAE, Eq. 5-6), §4.3 (execution: crop -> de-identify -> fuse). Training
(Eq. 7-8) lives in :mod:`facedeid.training.qmvae`; the input stacking below
(:func:`build_input_methods`, :func:`deidentified_versions`) is shared by inference and by the
training data, so the network is trained on exactly the stacks it is later given.

At inference the network only ever sees the de-identified versions of the aligned face; the
original crop is handed to the input operators and to nothing else. The checkpoint records which
operators (with parameters) and which crop size it was trained on; both are reproduced here.
torch is imported only when the method is built, so ``import facedeid`` stays light.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..alignment import FaceCrop
from ..errors import InvalidInputError, InvalidParameterError
from .base import DeidMethod, FaceContext, Param, load_weights_once
from .registry import create_method, parse_spec, register

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "qmvae_expression.pt"


def build_input_methods(inputs: Sequence[str]) -> list[DeidMethod]:
    """Registered methods for each ``"name:k=v,..."`` input spec, validated now (typos in a
    training run's ``--inputs`` fail before any face is processed)."""
    if len(inputs) < 1:
        raise InvalidParameterError("QM-VAE needs at least one de-identified input")
    return [create_method(name, **params) for name, params in map(parse_spec, inputs)]


def deidentified_versions(crop: FaceCrop, methods: Sequence[DeidMethod],
                          rng_key: Sequence[int]) -> list[np.ndarray]:
    """Every input method applied to one aligned crop: ``M`` arrays ``(S, S, 3) uint8``.

    Each method gets its own generator seeded by ``(*rng_key, position)``, so a face's stack is
    reproducible and does not depend on which other methods are in it.
    """
    versions = []
    for position, method in enumerate(methods):
        context = FaceContext(rng=np.random.default_rng([*rng_key, position]))
        pixels = np.asarray(method.apply(crop, context), dtype=np.uint8)
        if pixels.shape != crop.pixels.shape:
            raise InvalidInputError(f"input method {method.name!r} returned shape {pixels.shape}, "
                                    f"expected {crop.pixels.shape}")
        versions.append(pixels)
    return versions


@register
class QMVAEMethod(DeidMethod):
    """N classic de-identifications of the aligned face, fused by a trained QM-VAE."""

    name = "qmvae"
    summary = "QM-VAE: blindfold+mosaic+Laplace+cartoon fused by a VQ-VAE trained for a service"
    reference = "Qiu et al. 2022, QM-VAE §3.1, §4.2-4.3, Eq. (1)-(8)"
    space = "aligned"
    aligned_size = 64
    params = (
        Param("checkpoint", str, "", "QM-VAE checkpoint (.pt); empty = the shipped "
              "qmvae_expression.pt"),
        Param("batch_size", int, 64, "faces per network call", minimum=1, maximum=4096),
    )

    def validate(self) -> None:
        path = Path(self.config["checkpoint"]) if self.config["checkpoint"] else DEFAULT_CHECKPOINT
        from ..models.qmvae import load_qmvae
        self.model, payload = load_weights_once(path, load_qmvae)
        self.checkpoint_path = path
        self.aligned_size = int(self.model.config.image_size)  # instance override of the class value
        self.inputs = list(self.model.config.inputs)
        self.input_methods = build_input_methods(self.inputs)
        # an identity term in training pushed faces away from the surrogate recognizer
        train_config = payload.get("train_config") or {}
        self.trained_with = ("surrogate",) if float(train_config.get("identity_weight") or 0) > 0 \
            else ()

    def _stack(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        """``(S, S, 3N) uint8``: the N de-identified versions; the only thing the network sees."""
        if crop.pixels.shape[:2] != (self.aligned_size, self.aligned_size):
            raise ValueError(f"qmvae needs a {self.aligned_size}x{self.aligned_size} aligned crop, "
                             f"got {crop.pixels.shape[:2]}")
        key = context.rng.integers(0, 2 ** 31, size=1).tolist()
        return np.concatenate(deidentified_versions(crop, self.input_methods, key), axis=2)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        return self.apply_batch([crop], [context])[0]

    def apply_batch(self, crops: list[FaceCrop], contexts: list[FaceContext]) -> list[np.ndarray]:
        if not crops:
            return []
        stacks = np.stack([self._stack(crop, context) for crop, context in zip(crops, contexts)])
        return list(self.model.fuse(stacks, batch_size=self.config["batch_size"]))
