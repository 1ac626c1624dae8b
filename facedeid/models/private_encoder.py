"""Private-Encoder (seed 003, §3): encode a face into the generator's latent space with an
identity that moved as far as the privacy knob β asks.

Structure, as in the paper's Fig. 2: a feature pyramid over the input face
(:class:`~facedeid.models.face_generator.FeaturePyramid`, "map2style" heads, initialised from the
generator's own encoder), then one **Privacy Embedding Network** (PEN) per latent code — here one
per style vector and one for the spatial map — each a residual network that rewrites its code.
The frozen generator (:mod:`facedeid.models.face_generator`) decodes the rewritten codes.

Beyond the paper: β is an *input* of every PEN (the paper trains one model per β), so one model
serves the whole 0..1 range and ``--param beta=0.2`` is chosen at run time. β = 1 asks for the
original identity (cos(ID(x), ID(x̂)) = 1 in Eq. 3), β = 0 for an identity orthogonal to it.

Training (Eq. 1-3) is :mod:`facedeid.training.private_encoder`; this module is inference only
plus the network definitions. Pixels: float RGB in [0, 1], ``(B, 3, S, S)``.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MissingWeightsError
from .checkpoint_files import read_payload, save_payload
from .face_generator import FaceEncoder, FaceGenerator, FaceLatent, GeneratorConfig, half_state
from .tensors import crops_to_tensor, tensor_to_crops

CHECKPOINT_FORMAT = "facedeid.private_encoder/1"
TRAIN_COMMAND_HINT = ("make one with `facedeid train private-encoder --generator GEN.pt --out PE.pt` "
                      "(see docs/checkpoints.md)")
BETA_FEATURES = 8


class PrivateEncoderCheckpointError(MissingWeightsError):
    """A Private-Encoder checkpoint is missing, unreadable or of another format."""


def beta_features(beta: torch.Tensor) -> torch.Tensor:
    """``(B,)`` β -> ``(B, 8)``: β itself and sinusoids of it, so a small network can respond
    non-linearly to the knob."""
    beta = beta.reshape(-1, 1)
    frequencies = torch.arange(1, (BETA_FEATURES - 2) // 2 + 1, dtype=beta.dtype,
                               device=beta.device) * np.pi
    return torch.cat([beta, 1 - beta, torch.sin(beta * frequencies), torch.cos(beta * frequencies)],
                     dim=1)


class StylePEN(nn.Module):
    """PEN for one style vector: ``w' = w + MLP([w, φ(β)])`` (zero-initialised last layer, so
    training starts from the generator's faithful reconstruction)."""

    def __init__(self, style_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(style_dim + BETA_FEATURES, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, style_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, style: torch.Tensor, beta_code: torch.Tensor) -> torch.Tensor:
        return style + self.net(torch.cat([style, beta_code], dim=1))


class SpatialPEN(nn.Module):
    """PEN for the ``8x8`` spatial code: residual convs with φ(β) broadcast as extra channels."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels + BETA_FEATURES, hidden, 3, padding=1),
                                 nn.LeakyReLU(0.2), nn.Conv2d(hidden, hidden, 3, padding=1),
                                 nn.LeakyReLU(0.2), nn.Conv2d(hidden, channels, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, spatial: torch.Tensor, beta_code: torch.Tensor) -> torch.Tensor:
        planes = beta_code[:, :, None, None].expand(-1, -1, *spatial.shape[-2:])
        return spatial + self.net(torch.cat([spatial, planes], dim=1))


class PrivateEncoder(nn.Module):
    """Face + β -> private :class:`FaceLatent` (decode it with the frozen generator).

    The PENs' edit of the code is projected onto ``edit_basis``, the principal axes of real
    faces' codes (the generator's prior, copied in at training start): a first model without
    this learned striped, off-manifold textures that lowered faceres's similarity without
    making another face (85 % of its edit energy lay outside those axes, against 33 % for the
    change from one real face's code to another's; docs/benchmarks.md).
    """

    def __init__(self, config: GeneratorConfig, basis_rank: int = 128):
        super().__init__()
        self.config = config
        self.encoder = FaceEncoder(config)
        self.style_pens = nn.ModuleList(StylePEN(config.style_dim) for _ in range(config.num_styles))
        self.spatial_pen = SpatialPEN(config.spatial_channels)
        flat = config.spatial_channels * 64 + config.num_styles * config.style_dim
        self.register_buffer("edit_basis", torch.zeros(basis_rank, flat))

    def forward(self, faces: torch.Tensor, beta: torch.Tensor | float) -> FaceLatent:
        return self.edit(self.encoder(faces), beta)

    def edit(self, latent: FaceLatent, beta: torch.Tensor | float) -> FaceLatent:
        """The PENs' rewrite of an already encoded face (training encodes once per step)."""
        spatial = latent.spatial
        beta = torch.as_tensor(beta, dtype=spatial.dtype, device=spatial.device)
        beta_code = beta_features(beta.expand(spatial.shape[0]) if beta.dim() == 0 else beta)
        styles = torch.stack([pen(latent.styles[:, k], beta_code)
                              for k, pen in enumerate(self.style_pens)], dim=1)
        edited = FaceLatent(self.spatial_pen(latent.spatial, beta_code), styles)
        if not bool(self.edit_basis.any()):
            return edited
        edit = edited.flat() - latent.flat()
        edit = (edit @ self.edit_basis.T) @ self.edit_basis
        return FaceLatent.from_flat(latent.flat() + edit, self.config)


class PrivateFaceModel(nn.Module):
    """Private-Encoder + frozen generator: ``forward(faces, beta)`` -> private faces."""

    def __init__(self, private_encoder: PrivateEncoder, generator: FaceGenerator):
        super().__init__()
        self.private_encoder = private_encoder
        self.generator = generator

    def forward(self, faces: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
        return self.generator(self.private_encoder(faces, beta))

    @torch.no_grad()
    def anonymize(self, crops: np.ndarray, beta: float, batch_size: int = 32) -> np.ndarray:
        """``(N, S, S, 3) uint8`` aligned crops -> ``(N, S, S, 3) uint8`` private faces."""
        outputs = [tensor_to_crops(self(crops_to_tensor(crops[start:start + batch_size]),
                                        float(beta)))
                   for start in range(0, len(crops), batch_size)]
        size = self.generator.config.image_size
        return np.concatenate(outputs) if outputs else np.zeros((0, size, size, 3), np.uint8)


# -- checkpoints -------------------------------------------------------------------------------
def save_private_encoder(path: str | os.PathLike, model: PrivateFaceModel,
                         extra: dict[str, Any] | None = None) -> Path:
    """fp16 Private-Encoder *and* its generator in one file: a model is only meaningful with
    the exact generator it was trained against."""
    return save_payload(path, {"format": CHECKPOINT_FORMAT,
                               "config": asdict(model.generator.config),
                               "private_encoder": half_state(model.private_encoder),
                               "generator": half_state(model.generator), **(extra or {})})


def load_private_face_model(path: str | os.PathLike) -> tuple[PrivateFaceModel, dict[str, Any]]:
    """Rebuild the eval-mode, frozen model; a missing/corrupt file names the command to make it."""
    payload = read_payload(path, CHECKPOINT_FORMAT, "Private-Encoder checkpoint",
                           TRAIN_COMMAND_HINT, PrivateEncoderCheckpointError)
    config = GeneratorConfig(**payload["config"])
    model = PrivateFaceModel(PrivateEncoder(config), FaceGenerator(config))
    try:
        model.private_encoder.load_state_dict(
            {k: v.float() for k, v in payload["private_encoder"].items()})
        model.generator.load_state_dict({k: v.float() for k, v in payload["generator"].items()})
    except (RuntimeError, KeyError) as error:
        raise PrivateEncoderCheckpointError(
            f"Private-Encoder checkpoint {path} does not fit its stored configuration "
            f"({str(error).splitlines()[0]}); {TRAIN_COMMAND_HINT}") from None
    return model.eval().requires_grad_(False), payload
