"""The project's face generator: a style-modulated decoder over a spatial + global latent.

No pre-trained StyleGAN is obtainable offline, so the generator the seed methods stand on
(Private-Encoder, seed 003; IdentityDP and the password-invertible method, book ch. 5-6; k-Same-Net)
is trained here (:mod:`facedeid.training.generator`) on CelebA faces of people who are never
test subjects.

Latent space (designed for editing)
-----------------------------------
A face is described by two parts, :class:`FaceLatent`:

* ``spatial``: a coarse ``(C, 8, 8)`` map, the layout of the face (pose, where the eyes, mouth and
  hair are, background shape). Editing it moves things; it carries little texture.
* ``styles``: ``K`` global vectors (one per generator resolution, 8 -> 64 px; a W+-like set),
  each modulating the feature statistics (AdaIN) of its block: coarse codes drive face shape
  and colouring, fine codes skin texture and detail. Identity lives mostly here, which is why
  Private-Encoder gives every code its own privacy network.

Why not a pure noise-to-image GAN: at 64 px on two CPU cores there is no budget to train one
until it can *invert* arbitrary faces, and every seed method needs inversion (encode a real face,
edit its code, decode). So the generator is trained as the decoder of an encoder
(:class:`FaceEncoder`, a feature pyramid) with reconstruction, perceptual and adversarial
(PatchGAN + R1) losses; new faces are drawn from a Gaussian fitted to the codes of the training
faces (:meth:`FaceGenerator.sample`), which makes it a generator in the usual sense too. (On the
CPU budget of the shipped checkpoint the critic never got past chance and then diverged, so its
faces are those of a well-fitted auto-encoder: faithful, soft; see docs/checkpoints.md.)

Why 64 px: most training photos (half-resolution CelebA) hold a face whose eyes are ~21 px apart,
which a 128-px crop would upsample 1.56x, and a 128-px step costs 3.6x a 64-px one
(``benchmarks/generator_resolution.py``).

Pixels are float RGB in [0, 1], ``(B, 3, S, S)``; ``S`` = :attr:`GeneratorConfig.image_size`.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingWeightsError
from .checkpoint_files import read_payload, save_payload

CHECKPOINT_FORMAT = "facedeid.face_generator/1"
TRAIN_COMMAND_HINT = ("make one with `facedeid train generator --out GEN.pt` "
                      "(see docs/checkpoints.md)")


class GeneratorCheckpointError(MissingWeightsError):
    """A face generator checkpoint is missing, unreadable or of another format."""


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild the networks (stored in every checkpoint).

    Attributes:
        image_size: side of the aligned crop (a power of two, >= 16).
        spatial_channels: channels of the ``8x8`` spatial code.
        style_dim: length of every style vector.
        widths: channels of the generator blocks from 8 px up to ``image_size``
            (one block, hence one style code, per resolution).
    """

    image_size: int = 64
    spatial_channels: int = 16
    style_dim: int = 128
    widths: tuple[int, ...] = (256, 192, 96, 48)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if 8 * 2 ** (len(self.widths) - 1) != self.image_size:
            raise ValueError(f"{len(self.widths)} blocks from 8 px reach "
                             f"{8 * 2 ** (len(self.widths) - 1)} px, not {self.image_size}")

    @property
    def num_styles(self) -> int:
        return len(self.widths)


class FaceLatent(NamedTuple):
    """A face's code: ``spatial (B, C, 8, 8)`` and ``styles (B, K, D)``."""

    spatial: torch.Tensor
    styles: torch.Tensor

    def flat(self) -> torch.Tensor:
        """``(B, C*64 + K*D)``: the code as one vector (for averaging, noise, Gaussian fits)."""
        return torch.cat([self.spatial.flatten(1), self.styles.flatten(1)], dim=1)

    @staticmethod
    def from_flat(vector: torch.Tensor, config: GeneratorConfig) -> "FaceLatent":
        size = config.spatial_channels * 64
        spatial = vector[:, :size].reshape(-1, config.spatial_channels, 8, 8)
        styles = vector[:, size:].reshape(-1, config.num_styles, config.style_dim)
        return FaceLatent(spatial, styles)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
                         nn.LeakyReLU(0.2),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2))


class FeaturePyramid(nn.Module):
    """Convolutional trunk returning one feature map per scale, finest first.

    For ``image_size`` 64: maps at 32, 16 and 8 px. The deepest map feeds the spatial code and
    the coarse styles, the shallower maps the fine styles (the pSp-style "map2style" split that
    Private-Encoder's §3 encoder uses).
    """

    def __init__(self, config: GeneratorConfig, in_channels: int = 3):
        super().__init__()
        levels = int(np.log2(config.image_size // 8))
        widths = [min(32 * 2 ** i, 256) for i in range(levels + 1)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1),
                                  nn.LeakyReLU(0.2))
        self.levels = nn.ModuleList(_down(widths[i], widths[i + 1]) for i in range(levels))
        self.widths = widths[1:]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features, out = [], self.stem(x)
        for level in self.levels:
            out = level(out)
            features.append(out)
        return features


class MapToStyle(nn.Module):
    """A pyramid level -> one style vector (strided convs to 1x1, then a linear layer)."""

    def __init__(self, channels: int, size: int, style_dim: int):
        super().__init__()
        layers, current = [], channels
        while size > 2:
            layers += [nn.Conv2d(current, 128, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            current, size = 128, size // 2
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(current * size * size, style_dim)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(feature).flatten(1))


class FaceEncoder(nn.Module):
    """Image -> :class:`FaceLatent` (the generator's inverse, trained jointly with it)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.pyramid = FeaturePyramid(config)
        deepest = self.pyramid.widths[-1]
        self.to_spatial = nn.Conv2d(deepest, config.spatial_channels, 3, padding=1)
        # Coarse styles read the deepest (8 px) map, finer styles shallower maps.
        sources = self.style_sources()
        self.to_styles = nn.ModuleList(
            MapToStyle(self.pyramid.widths[level], 8 * 2 ** (len(self.pyramid.widths) - 1 - level),
                       config.style_dim) for level in sources)

    def style_sources(self) -> list[int]:
        """Pyramid level (index into :meth:`FeaturePyramid.forward`) read by each style."""
        deepest = len(self.pyramid.widths) - 1
        return [max(deepest - k // 2, 0) for k in range(self.config.num_styles)]

    def forward(self, faces: torch.Tensor) -> FaceLatent:
        features = self.pyramid(faces * 2 - 1)
        spatial = self.to_spatial(features[-1])
        styles = torch.stack([head(features[level]) for head, level in
                              zip(self.to_styles, self.style_sources())], dim=1)
        return FaceLatent(spatial, styles)


class ModulatedBlock(nn.Module):
    """Two 3x3 convs, each followed by AdaIN from the block's style vector."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.affine1 = nn.Linear(style_dim, 2 * out_channels)
        self.affine2 = nn.Linear(style_dim, 2 * out_channels)

    @staticmethod
    def _adain(x: torch.Tensor, style: torch.Tensor, affine: nn.Linear) -> torch.Tensor:
        scale, shift = affine(style)[:, :, None, None].chunk(2, dim=1)
        return F.instance_norm(x) * (1 + scale) + shift

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self._adain(self.conv1(x), style, self.affine1), 0.2)
        return F.leaky_relu(self._adain(self.conv2(x), style, self.affine2), 0.2)


class FaceGenerator(nn.Module):
    """:class:`FaceLatent` -> face ``(B, 3, S, S)`` in [0, 1].

    Buffers ``latent_mean``/``latent_basis``/``latent_scale`` hold a Gaussian fitted to the codes
    of the training faces (principal axes, :meth:`fit_latent_prior`); :meth:`sample` draws new
    faces from it. They are zero until fitted.
    """

    def __init__(self, config: GeneratorConfig, prior_rank: int = 128):
        super().__init__()
        self.config = config
        widths = config.widths
        self.from_spatial = nn.Conv2d(config.spatial_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            ModulatedBlock(widths[max(i - 1, 0)], widths[i], config.style_dim)
            for i in range(len(widths)))
        self.to_rgb = nn.Conv2d(widths[-1], 3, 1)
        flat = config.spatial_channels * 64 + config.num_styles * config.style_dim
        self.register_buffer("latent_mean", torch.zeros(flat))
        self.register_buffer("latent_basis", torch.zeros(prior_rank, flat))
        self.register_buffer("latent_scale", torch.zeros(prior_rank))

    def forward(self, latent: FaceLatent) -> torch.Tensor:
        x = self.from_spatial(latent.spatial)
        for index, block in enumerate(self.blocks):
            if index:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(x, latent.styles[:, index])
        return torch.sigmoid(self.to_rgb(x))

    @torch.no_grad()
    def fit_latent_prior(self, codes: torch.Tensor) -> None:
        """Fit the sampling Gaussian to ``(N, flat)`` codes of real faces (top principal axes)."""
        mean = codes.mean(0)
        _, singular, vectors = torch.linalg.svd(codes - mean, full_matrices=False)
        rank = min(self.latent_basis.shape[0], vectors.shape[0])
        self.latent_mean.copy_(mean)
        self.latent_basis.zero_()
        self.latent_scale.zero_()
        self.latent_basis[:rank] = vectors[:rank]
        self.latent_scale[:rank] = singular[:rank] / max(len(codes) - 1, 1) ** 0.5

    def edit_cost(self, edited: FaceLatent, original: FaceLatent) -> torch.Tensor:
        """``(B,)`` how unlike real-face variation an edit of the code is: the squared length
        of the edit in units of the prior's standard deviation along each principal axis, plus
        the part outside those axes as if it lay along the weakest one. An edit that a real
        face change could make (another face's shape, colouring) is cheap; an off-manifold
        texture a recognizer happens to dislike is expensive."""
        if not bool(self.latent_scale.any()):
            raise RuntimeError("the latent prior is not fitted (fit_latent_prior)")
        edit = edited.flat() - original.flat()
        kept = self.latent_scale > 0
        basis, scale = self.latent_basis[kept], self.latent_scale[kept]
        coefficients = edit @ basis.T
        inside = (coefficients / scale).pow(2).mean(1)
        outside = (edit - coefficients @ basis).pow(2).sum(1) / (edit.shape[1] * scale.min() ** 2)
        return inside + outside

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None,
               truncation: float = 1.0) -> torch.Tensor:
        """``count`` new faces drawn from the fitted Gaussian (``truncation`` < 1: closer to the
        mean face, more typical)."""
        if not bool(self.latent_scale.any()):
            raise RuntimeError("the latent prior is not fitted (fit_latent_prior)")
        noise = torch.randn(count, self.latent_scale.shape[0], generator=generator)
        flat = self.latent_mean + truncation * (noise * self.latent_scale) @ self.latent_basis
        return self(FaceLatent.from_flat(flat, self.config))


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: a grid of real/fake logits, one per overlapping face patch."""

    def __init__(self, image_size: int = 64, width: int = 64):
        super().__init__()
        layers, channels = [], 3
        for index in range(3):
            out = width * 2 ** index
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net(faces * 2 - 1)


# -- checkpoints -------------------------------------------------------------------------------
def half_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict in float16 (shipped checkpoints; loading casts back)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}


def save_generator(path: str | os.PathLike, encoder: FaceEncoder, generator: FaceGenerator,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write the fp16 encoder + generator (+ ``extra`` metadata) atomically."""
    return save_payload(path, {"format": CHECKPOINT_FORMAT, "config": asdict(generator.config),
                               "encoder": half_state(encoder), "generator": half_state(generator),
                               **(extra or {})})


def read_generator_payload(path: str | os.PathLike) -> dict[str, Any]:
    return read_payload(path, CHECKPOINT_FORMAT, "face generator checkpoint", TRAIN_COMMAND_HINT,
                        GeneratorCheckpointError)


def load_generator(path: str | os.PathLike) -> tuple[FaceEncoder, FaceGenerator, dict[str, Any]]:
    """Rebuild the eval-mode, frozen encoder and generator from a checkpoint (float32)."""
    payload = read_generator_payload(path)
    config = GeneratorConfig(**payload["config"])
    encoder, generator = FaceEncoder(config), FaceGenerator(config)
    try:
        encoder.load_state_dict({k: v.float() for k, v in payload["encoder"].items()})
        generator.load_state_dict({k: v.float() for k, v in payload["generator"].items()})
    except RuntimeError as error:
        raise GeneratorCheckpointError(f"face generator checkpoint {path} does not fit its stored "
                                       f"configuration ({str(error).splitlines()[0]}); "
                                       f"{TRAIN_COMMAND_HINT}") from None
    for module in (encoder, generator):
        module.eval().requires_grad_(False)
    return encoder, generator, payload
