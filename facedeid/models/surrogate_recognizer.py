"""A small differentiable face recognizer: the white-box surrogate for adversarial cloaks.

Why it exists: dlib's ResNet recognizer (the project's reference re-identification attacker) is
not differentiable from Python, so a PGD identity cloak (Fawkes, Shan et al. USENIX Sec. 2020;
LowKey, Cherepanova et al. ICLR 2021; book ch. 3.1.3) needs a recognizer it can back-propagate
through. Learned methods reuse it as an identity loss.

What it is: a 7-layer CNN (about 1.1 M parameters) on 64x64 RGB aligned faces, producing an
L2-normalised 128-D embedding. It is trained from scratch (no pre-trained backbone is available
offline) on the 200 identities of the celeba-id200 *train* split (24 photos each) with a CosFace
large-margin cosine loss (Wang et al., CVPR 2018, Eq. 4: L = -log e^{s(cos θ_y - m)} /
(e^{s(cos θ_y - m)} + Σ_{j≠y} e^{s cos θ_j})) — see :mod:`facedeid.training.recognizer`.
It is a *weak* recognizer next to dlib (trained on 4,800 photos); its accuracy is recorded in
``docs/checkpoints.md``.

Input convention: aligned crops from :class:`facedeid.alignment.FaceAligner` (any square size,
default ``face_fraction``), ``(N, 3, H, W)`` float RGB in [0, 1]; they are resized to 64x64
inside :meth:`SurrogateRecognizer.forward` (differentiably, so gradients reach full-size pixels).

As an attacker in the evaluator it is wrapped by
:class:`facedeid.evaluation.surrogate_recognizer.SurrogateFaceRecognizer` (registered as
``"surrogate"``); this module stays below the evaluation layer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingWeightsError

INPUT_SIZE = 64
EMBEDDING_DIM = 128
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "surrogate_recognizer.pt"
TRAIN_COMMAND = ("python -m facedeid.training.recognizer "
                 "--out facedeid/checkpoints/surrogate_recognizer.pt")
# Per-channel normalisation (fixed, roughly CelebA's statistics; exact values do not matter
# because the first BatchNorm re-normalises, but they keep inputs centred).
_MEAN = (0.5, 0.42, 0.38)
_STD = (0.29, 0.27, 0.27)


def _conv_block(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(channels_out), nn.PReLU(channels_out))


class SurrogateRecognizer(nn.Module):
    """``(N, 3, H, W)`` float RGB in [0, 1] -> ``(N, 128)`` unit-norm embeddings."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(3, 32, 1), _conv_block(32, 32, 2),      # 32x32
            _conv_block(32, 64, 1), _conv_block(64, 64, 2),     # 16x16
            _conv_block(64, 128, 1), _conv_block(128, 128, 2),  # 8x8
            _conv_block(128, 256, 2),                           # 4x4
            nn.BatchNorm2d(256))
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(256 * 4 * 4, embedding_dim)
        self.output_norm = nn.BatchNorm1d(embedding_dim)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                   align_corners=False, antialias=True)
        features = self.features((images - self.mean) / self.std)
        raw = self.output_norm(self.project(self.dropout(features.flatten(1))))
        return F.normalize(raw, dim=1)

    @torch.no_grad()
    def embed(self, aligned: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """``(N, S, S, 3)`` uint8 RGB aligned crops -> ``(N, 128)`` float32 unit embeddings."""
        was_training = self.training
        self.eval()
        aligned = np.asarray(aligned)
        if aligned.ndim == 3:
            aligned = aligned[None]
        out = []
        for start in range(0, len(aligned), batch_size):
            batch = torch.from_numpy(aligned[start:start + batch_size]).permute(0, 3, 1, 2)
            out.append(self(batch.float() / 255.0).numpy())
        self.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, EMBEDDING_DIM),
                                                                           np.float32)


def save_surrogate_recognizer(model: SurrogateRecognizer, path: str | Path, meta: dict) -> None:
    """Store weights as float16 (halves the file; the embedding changes by < 1e-3)."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, Path(path))


_CACHE: dict[str, SurrogateRecognizer] = {}


def load_surrogate_recognizer(path: str | Path | None = None) -> SurrogateRecognizer:
    """Load the shipped checkpoint (once per process), in eval mode, on CPU.

    Raises:
        MissingWeightsError: the checkpoint is absent or unreadable; the message names the
            training command that produces it.
    """
    path = Path(path) if path is not None else CHECKPOINT
    key = str(path.resolve())
    if key in _CACHE:
        return _CACHE[key]
    if not path.is_file():
        raise MissingWeightsError(
            f"surrogate recognizer checkpoint not found at {path}.\n"
            f"Train it (about 15 min on 2 CPU cores, needs ../shared/data/celeba-id200) with:\n"
            f"  {TRAIN_COMMAND}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = SurrogateRecognizer(embedding_dim=int(payload["meta"].get("embedding_dim",
                                                                          EMBEDDING_DIM)))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in payload["state_dict"].items()})
    except Exception as error:  # a truncated or foreign file
        raise MissingWeightsError(
            f"surrogate recognizer checkpoint {path} is unreadable ({error}).\n"
            f"Re-create it with: {TRAIN_COMMAND}") from None
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.meta = payload["meta"]
    _CACHE[key] = model
    return model
