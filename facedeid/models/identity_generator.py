"""A disentangled identity / attribute face generator (book ch. 5 §5.3.5 and ch. 6 §6.3).

IdentityDP (ch. 5) and the password-invertible method (ch. 6) both split a face into

* an **identity representation** ``r_id``: here the faceres descriptor (the recognizer's last
  feature vector, Eq. 5.7) of the aligned crop at :data:`IDENTITY_INPUT_SIZE` px, expressed in
  the whitened principal axes of the training faces' descriptors
  (:class:`IdentitySpace`, ``rank`` coefficients of unit spread). faceres is therefore "seen in
  training" for every method built on this model;
* **multi-level attribute maps** ``r_att = {r_att^1..r_att^n}`` (Eq. 5.8 / 6.8): the decoder
  levels of a U-Net over the face (:class:`AttributeUNet`), at 8, 16, 32 and 64 px;

and a **fusion generator** ``h(r_id, r_att)`` (Eq. 5.9) built from Adaptive Attentional
Denormalization blocks (FaceShifter's AAD, which the book uses): at every level a learned mask
chooses, per pixel, between features modulated by the attribute map and features modulated by
the identity, so identity can drive the face's interior while pose, expression, lighting and
background come from the attribute maps.

Built on the project's face generator (:mod:`facedeid.models.face_generator`): the U-Net's
contracting path starts from its encoder's feature pyramid and the fusion generator's
convolutions from its decoder blocks (same widths, 8 -> 64 px), so training starts from
filters that already draw faces. 64-px crops for the reasons measured there
(``benchmarks/generator_resolution.py``). Training: :mod:`facedeid.training.identity_generator`.

Pixels are float RGB in [0, 1], ``(B, 3, S, S)``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingWeightsError
from .checkpoint_files import read_payload, save_payload
from .face_generator import FeaturePyramid, GeneratorConfig, half_state

CHECKPOINT_FORMAT = "facedeid.identity_generator/1"
TRAIN_COMMAND_HINT = ("make one with `facedeid train identity-generator --generator GEN.pt "
                      "--out IDGEN.pt` (see docs/checkpoints.md)")
#: faceres input side for the identity representation: at 160 px a training step's identity
#: loss costs about half the 224-px one, and the same size is used at inference so the
#: representation the generator was trained on is the one it gets
IDENTITY_INPUT_SIZE = 160


class IdentityGeneratorCheckpointError(MissingWeightsError):
    """An identity-generator checkpoint is missing, unreadable or of another format."""


@dataclass
class IdentityGeneratorConfig:
    """What rebuilds the networks (stored in every checkpoint).

    Attributes:
        image_size: aligned crop side (64: the face generator's).
        widths: fusion-generator channels from 8 px up (the face generator's widths).
        attribute_channels: channels of the attribute maps, one per level (8 px first).
        identity_rank: length of ``r_id`` (whitened principal coefficients).
        descriptor_dim: faceres descriptor length.
        skip_levels: how many expanding U-Net levels after the bottleneck read the contracting
            path (1: only the 16-px level). Finer skips hand the generator the input's own
            detail, and it then redraws the input whatever the identity code says: with skips
            at every level the first run's faces drawn with *another* face's code kept a faceres
            cosine of 0.88 to the input after 200 steps (docs/checkpoints.md).
    """

    image_size: int = 64
    widths: tuple[int, ...] = (256, 128, 64, 32)
    attribute_channels: tuple[int, ...] = (256, 128, 64, 32)
    identity_rank: int = 128
    descriptor_dim: int = 1024
    skip_levels: int = 1

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.attribute_channels = tuple(int(c) for c in self.attribute_channels)
        if len(self.widths) != len(self.attribute_channels):
            raise ValueError("one attribute map per generator level")
        if 8 * 2 ** (len(self.widths) - 1) != self.image_size:
            raise ValueError(f"{len(self.widths)} levels from 8 px do not reach {self.image_size}")

    def pyramid_config(self) -> GeneratorConfig:
        return GeneratorConfig(image_size=self.image_size, widths=self.widths)


class IdentitySpace(nn.Module):
    """The identity representation's coordinates: whitened principal axes of faceres descriptors.

    ``encode(descriptor) -> r_id`` (``rank`` coefficients, unit spread over the training faces)
    and ``decode(r_id) -> unit descriptor``. Fitted once on the training faces
    (:meth:`fit`). The buffers also hold what the privacy mechanisms need:

    * ``lower``/``upper``: the per-axis range of the training coefficients. IdentityDP clips
      ``r_id`` into this box before adding noise, so the L1 sensitivity is *bounded* for any
      input: ``sensitivity_bound = sum(upper - lower)``;
    * ``sensitivity_empirical``: the book's Δf (Eq. 5.12), the largest L1 distance between two
      training faces' representations (reported next to the bound);
    * ``typical_radius``: the 99th percentile of the training coefficients' length; noisy codes
      are pulled back inside it (post-processing, DP-safe) so they stay plausible faces.
    """

    def __init__(self, rank: int = 128, descriptor_dim: int = 1024):
        super().__init__()
        self.register_buffer("mean", torch.zeros(descriptor_dim))
        self.register_buffer("basis", torch.zeros(rank, descriptor_dim))
        self.register_buffer("scale", torch.ones(rank))
        self.register_buffer("lower", -torch.ones(rank))
        self.register_buffer("upper", torch.ones(rank))
        self.register_buffer("typical_radius", torch.tensor(float(rank) ** 0.5))
        self.register_buffer("sensitivity_empirical", torch.tensor(0.0))

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    @property
    def sensitivity_bound(self) -> float:
        """L1 sensitivity of the clipped representation: no two inputs differ by more."""
        return float((self.upper - self.lower).sum())

    @torch.no_grad()
    def fit(self, descriptors: torch.Tensor, pair_chunk: int = 512) -> dict[str, float]:
        """Fit the axes to ``(N, D)`` unit descriptors of training faces; returns the statistics
        (Δf is the exact maximum over all pairs, computed in chunks)."""
        mean = descriptors.mean(0)
        _, singular, vectors = torch.linalg.svd(descriptors - mean, full_matrices=False)
        rank = min(self.rank, len(singular))  # fewer faces than axes: the rest stay 0
        self.mean.copy_(mean)
        self.basis.zero_()
        self.basis[:rank] = vectors[:rank]
        self.scale.fill_(1.0)
        self.scale[:rank] = (singular[:rank] / max(len(descriptors) - 1, 1) ** 0.5).clamp_min(1e-6)
        codes = self.encode(descriptors)
        self.lower.copy_(codes.min(0).values)
        self.upper.copy_(codes.max(0).values)
        self.typical_radius.copy_(codes.norm(dim=1).quantile(0.99))
        largest = 0.0
        for start in range(0, len(codes), pair_chunk):
            largest = max(largest, float(torch.cdist(codes[start:start + pair_chunk], codes,
                                                     p=1).max()))
        self.sensitivity_empirical.fill_(largest)
        explained = float(singular[:rank].pow(2).sum() / singular.pow(2).sum())
        return {"faces": len(descriptors), "rank": rank, "explained_variance": round(explained, 4),
                "sensitivity_empirical_l1": round(largest, 3),
                "sensitivity_bound_l1": round(self.sensitivity_bound, 3),
                "typical_radius": round(float(self.typical_radius), 3)}

    def encode(self, descriptors: torch.Tensor) -> torch.Tensor:
        return ((descriptors - self.mean) @ self.basis.T) / self.scale

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mean + (codes * self.scale) @ self.basis, dim=1)

    def clip(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes clipped into the training box (bounds the sensitivity)."""
        return torch.maximum(torch.minimum(codes, self.upper), self.lower)

    def pull_inside(self, codes: torch.Tensor) -> torch.Tensor:
        """Clip into the box, then shrink codes longer than :attr:`typical_radius` onto it: a
        noisy code far outside the training faces becomes a plausible one in its direction."""
        codes = self.clip(codes)
        length = codes.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return codes * (self.typical_radius / length).clamp(max=1.0)


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.1))


class AttributeUNet(nn.Module):
    """U-Net: a contracting feature pyramid, an expanding path with skips; its expanding
    levels (8, 16, 32, 64 px) are the attribute maps ``r_att^1..r_att^n`` (Eq. 5.8)."""

    def __init__(self, config: IdentityGeneratorConfig):
        super().__init__()
        self.pyramid = FeaturePyramid(config.pyramid_config())
        skips = [self.pyramid.stem[0].out_channels] + list(self.pyramid.widths[:-1])
        channels = config.attribute_channels
        self.bottleneck = _conv(self.pyramid.widths[-1], channels[0])
        # level k (k >= 1) upsamples level k-1; the first skip_levels of them also read the
        # pyramid map of the same size
        self.skip_levels = config.skip_levels
        self.expand = nn.ModuleList(
            _conv(channels[k - 1] + (skips[-k] if k <= self.skip_levels else 0), channels[k])
            for k in range(1, len(channels)))

    def forward(self, faces: torch.Tensor) -> list[torch.Tensor]:
        x = self.pyramid.stem(faces * 2 - 1)
        contracting = [x]
        for level in self.pyramid.levels:
            x = level(x)
            contracting.append(x)
        maps = [self.bottleneck(contracting[-1])]
        for k, block in enumerate(self.expand, start=1):
            up = F.interpolate(maps[-1], scale_factor=2, mode="bilinear", align_corners=False)
            if k <= self.skip_levels:
                up = torch.cat([up, contracting[-1 - k]], dim=1)
            maps.append(block(up))
        return maps


class AADLayer(nn.Module):
    """Adaptive Attentional Denormalization: ``(1 - M) * A + M * I`` with
    ``A = norm(h) * (1 + γ_att) + β_att`` (from the attribute map, per pixel),
    ``I = norm(h) * (1 + γ_id) + β_id`` (from ``r_id``, per channel) and the attention mask
    ``M = σ(conv(norm(h)))`` deciding where identity draws the face."""

    def __init__(self, channels: int, attribute_channels: int, identity_dim: int):
        super().__init__()
        self.attribute = nn.Conv2d(attribute_channels, 2 * channels, 3, padding=1)
        self.identity = nn.Linear(identity_dim, 2 * channels)
        self.mask = nn.Conv2d(channels, 1, 1)

    def forward(self, h: torch.Tensor, attribute: torch.Tensor,
                identity: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(h)
        gamma_att, beta_att = self.attribute(attribute).chunk(2, dim=1)
        gamma_id, beta_id = self.identity(identity)[:, :, None, None].chunk(2, dim=1)
        by_attribute = normalized * (1 + gamma_att) + beta_att
        by_identity = normalized * (1 + gamma_id) + beta_id
        mask = torch.sigmoid(self.mask(normalized))
        return (1 - mask) * by_attribute + mask * by_identity


class AADBlock(nn.Module):
    """conv -> AAD -> LeakyReLU, twice (the face generator's block with AdaIN replaced by AAD,
    so its convolutions can start from the face generator's)."""

    def __init__(self, in_channels: int, out_channels: int, attribute_channels: int,
                 identity_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.aad1 = AADLayer(out_channels, attribute_channels, identity_dim)
        self.aad2 = AADLayer(out_channels, attribute_channels, identity_dim)

    def forward(self, x, attribute, identity):
        x = F.leaky_relu(self.aad1(self.conv1(x), attribute, identity), 0.2)
        return F.leaky_relu(self.aad2(self.conv2(x), attribute, identity), 0.2)


class FusionGenerator(nn.Module):
    """``h(r_id, r_att)`` (Eq. 5.9 / 6.18): cascaded AAD blocks from 8 px to the crop size."""

    def __init__(self, config: IdentityGeneratorConfig):
        super().__init__()
        widths, channels = config.widths, config.attribute_channels
        self.start = nn.Conv2d(channels[0], widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            AADBlock(widths[max(k - 1, 0)], widths[k], channels[k], config.identity_rank)
            for k in range(len(widths)))
        self.to_rgb = nn.Conv2d(widths[-1], 3, 1)

    def forward(self, identity: torch.Tensor, attributes: list[torch.Tensor]) -> torch.Tensor:
        x = self.start(attributes[0])
        for k, block in enumerate(self.blocks):
            if k:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(x, attributes[k], identity)
        return torch.sigmoid(self.to_rgb(x))


class IdentityGenerator(nn.Module):
    """Attribute U-Net + identity space + fusion generator; faceres (the identity encoder) is
    passed in where needed, it is not part of the checkpoint."""

    def __init__(self, config: IdentityGeneratorConfig):
        super().__init__()
        self.config = config
        self.attributes = AttributeUNet(config)
        self.space = IdentitySpace(config.identity_rank, config.descriptor_dim)
        self.fusion = FusionGenerator(config)

    def forward(self, identity: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Draw ``faces``' attributes with the identity code ``identity`` (``(B, rank)``)."""
        return self.fusion(identity, self.attributes(faces))

    @torch.no_grad()
    def start_from_face_generator(self, encoder, generator) -> int:
        """Copy the face generator's pyramid and decoder convolutions (same shapes); returns
        how many tensors were copied."""
        copied = 0
        own = self.attributes.pyramid.state_dict()
        for name, value in encoder.pyramid.state_dict().items():
            if name in own and own[name].shape == value.shape:
                own[name].copy_(value)
                copied += 1
        for mine, theirs in zip(self.fusion.blocks, generator.blocks):
            for conv in ("conv1", "conv2"):
                for part in ("weight", "bias"):
                    target, source = getattr(getattr(mine, conv), part), \
                        getattr(getattr(theirs, conv), part)
                    if target.shape == source.shape:
                        target.copy_(source)
                        copied += 1
        if self.fusion.to_rgb.weight.shape == generator.to_rgb.weight.shape:
            self.fusion.to_rgb.weight.copy_(generator.to_rgb.weight)
            self.fusion.to_rgb.bias.copy_(generator.to_rgb.bias)
            copied += 2
        return copied


def IdentityEncoder(size: int = IDENTITY_INPUT_SIZE):
    """The identity encoder ``f`` of Eq. 5.7: faceres at :data:`IDENTITY_INPUT_SIZE` px."""
    from .faceres import ResizedFaceres
    return ResizedFaceres(size)


# -- checkpoints -------------------------------------------------------------------------------
def save_identity_generator(path: str | os.PathLike, model: IdentityGenerator,
                            extra: dict[str, Any] | None = None) -> Path:
    """fp16 networks, float32 identity space (its statistics are the privacy calibration)."""
    state = {k: v for k, v in half_state(model).items() if not k.startswith("space.")}
    space = {k: v.float() for k, v in model.space.state_dict().items()}
    return save_payload(path, {"format": CHECKPOINT_FORMAT, "config": asdict(model.config),
                               "networks": state, "space": space, **(extra or {})})


def load_identity_generator(path: str | os.PathLike) -> tuple[IdentityGenerator, dict[str, Any]]:
    """The eval-mode, frozen model (float32); a bad file names the command that makes one."""
    payload = read_payload(path, CHECKPOINT_FORMAT, "identity-generator checkpoint",
                           TRAIN_COMMAND_HINT, IdentityGeneratorCheckpointError)
    try:
        model = IdentityGenerator(IdentityGeneratorConfig(**payload["config"]))
        model.load_state_dict({**{k: v.float() for k, v in payload["networks"].items()},
                               **{f"space.{k}": v for k, v in payload["space"].items()}})
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise IdentityGeneratorCheckpointError(
            f"identity-generator checkpoint {path} does not fit its stored configuration "
            f"({str(error).splitlines()[0]}); {TRAIN_COMMAND_HINT}") from None
    return model.eval().requires_grad_(False), payload
