"""QM-VAE network: a multi-input VQ-VAE that fuses N de-identified versions of one face.

Implements §4.2 of Qiu et al., "A Novel Generative Model for Face Privacy Protection in Video
Surveillance with Utility Maintenance", Appl. Sci. 2022 (seed 000):

* the input ``x`` is the channel-wise stack of N de-identified images of the same aligned face
  (blindfold, mosaic, Laplace, cartoon in the paper), shape ``(B, 3N, S, S)``;
* the encoder maps ``x`` to ``z_e(x)``; every latent vector is replaced by its nearest codebook
  entry (Eq. 5-6) with the straight-through gradient copy ``z_e -> z_q``;
* the decoder turns ``z_q(x)`` into one face ``(B, 3, S, S)`` in [0, 1].

The codebook and commitment terms of Eq. 7 (``||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2``) are
returned separately so the trainer (:mod:`facedeid.training.qmvae`) can add the service and MSE
terms. The nearest-neighbour search and straight-through copy come from ``vector-quantize-pytorch``;
its built-in commitment loss is switched off because it weights the codebook and encoder sides
equally, whereas Eq. 7 weights them 1 and beta, so the two terms are computed here from the codes.

Privacy by construction: :meth:`QMVAE.forward` takes the de-identified stack and nothing else.
The original face exists only as a training target, outside this module.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingWeightsError
from .checkpoint_files import read_payload, save_payload
from .tensors import crops_to_tensor, tensor_to_crops

CHECKPOINT_FORMAT = "facedeid.qmvae/1"
TRAIN_COMMAND_HINT = ("train one with `facedeid train qmvae --data ../shared/data/celeba-first10k"
                      "/img_align_celeba --limit 1000 --out CKPT.pt` (see docs/checkpoints.md)")


class CheckpointError(MissingWeightsError):
    """A QM-VAE checkpoint is missing, unreadable, or was written for another configuration."""


@dataclass
class QMVAEConfig:
    """Everything needed to rebuild the network (stored in every checkpoint).

    Attributes:
        inputs: de-identification methods whose outputs are stacked, in channel order; each
            entry is ``"name"`` or ``"name:key=value,key=value"`` (registered method parameters).
        image_size: side S of the aligned square crop the model works on.
        hidden: channels of the widest encoder/decoder layer.
        latent_dim: dimension of z_e(x) and of every codebook vector.
        codebook_size: number K of codebook vectors e_1..e_K.
        downsamples: stride-2 stages; the latent grid is ``S / 2**downsamples`` on a side.
        res_blocks: residual blocks at the latent resolution in encoder and decoder.
        beta: commitment weight of Eq. 7 (paper: 0.25).
        codebook_update: ``"loss"`` learns the codebook by the ``||sg[z_e] - e||^2`` term of
            Eq. 7 literally; ``"ema"`` (default) moves it by exponential moving averages with
            k-means initialisation and dead-code restarts instead -- the alternative the VQ-VAE
            paper gives for that term. Measured here: with the literal term and only a few
            hundred steps on 800 faces the codebook went unused and the codebook loss blew up.
        service_classes: K > 0 adds a *service head* (beyond the paper): a small classifier on
            the quantized codes z_q(x) that is trained to give the black box's answer on the
            original face. It makes the discrete codes carry what the service decides, so the
            decoder has it to render; it reads only the codes, so the original still never
            enters the network. 0 (default) = the paper's model.
    """

    inputs: list[str] = field(default_factory=lambda: ["blindfold", "mosaic", "laplace", "cartoon"])
    image_size: int = 64
    hidden: int = 32
    latent_dim: int = 32
    codebook_size: int = 256
    downsamples: int = 3
    res_blocks: int = 2
    beta: float = 0.25
    codebook_update: str = "ema"
    service_classes: int = 0

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QMVAEConfig":
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


class _Residual(nn.Module):
    """VQ-VAE residual block: x + conv1x1(relu(conv3x3(relu(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels // 2, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(channels // 2, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@dataclass
class QMVAEOutput:
    """What one forward pass returns.

    Attributes:
        reconstruction: ``(B, 3, S, S)`` fused face in [0, 1].
        codes: ``(B, s, s)`` long, index k of Eq. 6 for every latent position.
        codebook_loss: ``||sg[z_e(x)] - e||^2`` (moves the codebook only).
        commitment_loss: ``||z_e(x) - sg[e]||^2`` (moves the encoder only; the caller weights it
            by beta, see :attr:`QMVAE.beta`).
        service_logits: ``(B, K)`` the service head's guess of the black box's answer on the
            original, from the codes alone; None without a head.
    """

    reconstruction: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    service_logits: torch.Tensor | None = None


class QMVAE(nn.Module):
    """The QM-VAE generator. ``forward(stack)`` with ``stack`` ``(B, 3N, S, S)`` float in [0, 1]."""

    def __init__(self, config: QMVAEConfig | None = None) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.config = config = config or QMVAEConfig()
        if config.image_size % (2 ** config.downsamples):
            raise ValueError(f"image_size {config.image_size} is not divisible by "
                             f"2**downsamples = {2 ** config.downsamples}")
        in_channels = 3 * config.num_inputs
        widths = [config.hidden // 2 ** (config.downsamples - 1 - i) for i in range(config.downsamples)]
        encoder: list[nn.Module] = []
        previous = in_channels
        for width in widths:  # each stage halves the resolution
            encoder += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.ReLU()]
            previous = width
        encoder.append(nn.Conv2d(previous, config.hidden, 3, padding=1))
        encoder += [_Residual(config.hidden) for _ in range(config.res_blocks)]
        encoder += [nn.ReLU(), nn.Conv2d(config.hidden, config.latent_dim, 1)]
        self.encoder = nn.Sequential(*encoder)

        # Learned codebook with plain straight-through (Eq. 5-6); the library's own commitment
        # loss is off because Eq. 7 needs the codebook and encoder terms weighted 1 and beta.
        if config.codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', got {config.codebook_update!r}")
        learned = config.codebook_update == "loss"
        self.quantizer = VectorQuantize(
            dim=config.latent_dim, codebook_size=config.codebook_size, accept_image_fmap=True,
            learnable_codebook=learned, ema_update=not learned, rotation_trick=False,
            commitment_weight=0.0, decay=0.99, kmeans_init=not learned,
            threshold_ema_dead_code=0 if learned else 2)

        decoder: list[nn.Module] = [nn.Conv2d(config.latent_dim, config.hidden, 3, padding=1)]
        decoder += [_Residual(config.hidden) for _ in range(config.res_blocks)]
        decoder.append(nn.ReLU())
        previous = config.hidden
        for width in reversed(widths[:-1]):
            decoder += [nn.ConvTranspose2d(previous, width, 4, stride=2, padding=1), nn.ReLU()]
            previous = width
        decoder.append(nn.ConvTranspose2d(previous, 3, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*decoder)
        self.service_head = None
        if config.service_classes > 0:
            self.service_head = nn.Sequential(
                nn.Conv2d(config.latent_dim, config.hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(config.hidden, config.hidden, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(config.hidden,
                                                                 config.service_classes))

    @property
    def beta(self) -> float:
        return self.config.beta

    def encode(self, stack: torch.Tensor) -> torch.Tensor:
        """``(B, 3N, S, S)`` -> z_e(x) ``(B, D, s, s)``."""
        expected = 3 * self.config.num_inputs
        if stack.ndim != 4 or stack.shape[1] != expected:
            raise ValueError(f"QM-VAE expects a (B, {expected}, S, S) stack of "
                             f"{self.config.num_inputs} de-identified images; got {tuple(stack.shape)}")
        return self.encoder(stack * 2.0 - 1.0)

    def forward(self, stack: torch.Tensor) -> QMVAEOutput:
        """Fuse the de-identified stack into one face. The original is never an argument."""
        z_e = self.encode(stack)
        z_q, codes, _ = self.quantizer(z_e)  # z_q carries the straight-through gradient to z_e
        chosen = self._code_vectors(codes)  # e_k with gradient to the codebook, (B, D, s, s)
        codebook_loss = F.mse_loss(chosen, z_e.detach())
        commitment_loss = F.mse_loss(z_e, chosen.detach())
        reconstruction = torch.sigmoid(self.decoder(z_q))
        # The head reads z_q (straight-through to the encoder), so what it learns is in the codes.
        service_logits = None if self.service_head is None else self.service_head(z_q)
        return QMVAEOutput(reconstruction, codes, codebook_loss, commitment_loss, service_logits)

    def _code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        embedding = self.quantizer.codebook  # (K, D); a Parameter only with codebook_update="loss"
        return embedding[codes].permute(0, 3, 1, 2)

    @torch.no_grad()
    def fuse(self, stack: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Numpy convenience: ``(B, S, S, 3N) uint8`` stacks -> ``(B, S, S, 3) uint8`` faces."""
        was_training = self.training
        self.eval()
        outputs = []
        for start in range(0, len(stack), batch_size):
            faces = self(crops_to_tensor(stack[start:start + batch_size])).reconstruction
            outputs.append(tensor_to_crops(faces))
        self.train(was_training)
        return np.concatenate(outputs) if outputs else np.zeros((0,) + stack.shape[1:3] + (3,), np.uint8)


def stack_versions(versions: list[np.ndarray]) -> np.ndarray:
    """N de-identified ``(S, S, 3) uint8`` images -> one ``(S, S, 3N) uint8`` model input."""
    shapes = {version.shape for version in versions}
    if len(shapes) != 1:
        raise ValueError(f"all de-identified versions must share one shape, got {sorted(shapes)}")
    return np.concatenate(versions, axis=2)


# -- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, model: QMVAE, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{format, config, state_dict, **extra}`` atomically (temp file + rename).

    A crash mid-write leaves the previous checkpoint intact, never a truncated file.
    """
    return save_payload(path, {"format": CHECKPOINT_FORMAT, "config": asdict(model.config),
                               "state_dict": model.state_dict(), **(extra or {})})


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict, or raise :class:`CheckpointError` saying how to make one."""
    return read_payload(path, CHECKPOINT_FORMAT, "QM-VAE checkpoint", TRAIN_COMMAND_HINT,
                        CheckpointError)


def load_qmvae(path: str | os.PathLike) -> tuple[QMVAE, dict[str, Any]]:
    """Rebuild the eval-mode network from a checkpoint; returns ``(model, payload)``."""
    payload = read_checkpoint(path)
    model = QMVAE(QMVAEConfig.from_dict(payload["config"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"QM-VAE checkpoint {path} does not fit its stored configuration "
                              f"({str(error).splitlines()[0]}); {TRAIN_COMMAND_HINT}") from None
    return model.eval(), payload


def export_checkpoint(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy a training checkpoint without its training-only state (what ships in checkpoints/):
    the optimizer and, for surrogate-mode runs, the service student, which are needed to resume
    training but not to anonymize."""
    payload = read_checkpoint(source)
    model = QMVAE(QMVAEConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    kept = {key: value for key, value in payload.items()
            if key not in ("format", "config", "state_dict", "optimizer", "surrogate")}
    return save_checkpoint(destination, model, {**kept, "exported_from": str(source)})
