"""Enhanced Embedded AutoEncoders (EEAE, Liu et al., IEEE IoT-J 2023, seed 004): the networks.

Three networks, as in the paper's Fig. 2:

* :class:`ExternalAutoEncoder` (Fig. 3, outer part): five convolutional encoder layers map a
  face ``x`` to its representation ``r``, five decoder layers map it back. Pre-trained alone
  with Eq. 6 (pixel MSE), then frozen, so ``r`` holds *everything* about the face, identity
  included.
* :class:`InternalAutoEncoder` (Fig. 3, inner part): six encoder and six decoder convolutional
  layers from ``r`` to ``y`` of the same shape. It is the only part trained with the multiple
  loss of Eq. 7, ``L_i(d, y) + α1 Σ_n L_f_n + α2 L_p``: ``y`` is pulled towards the attribute
  network's feature map ``d`` of the original, the decoded face ``x̂ = Dec(y)`` must still give
  the right attributes, and its identity embedding must turn away from the original's (cosine,
  Eq. 5). :class:`PrivacyRemovalNetwork` (the paper's PRN) chains the three parts.
* :class:`FeatureSelectionNetwork` (FSN, Fig. 6): hard-parameter-sharing multi-task attribute
  classifier — six shared Conv-BatchNorm-LeakyReLU(-MaxPool) layers whose output is ``d``, and
  one group of three fully connected layers (dropout 0.5) per attribute, each ending in two
  logits (Eq. 4 cross-entropy). It is *not* the project's
  :class:`~facedeid.models.attribute_net.AttributeNet`: that one has eight convolutions, global
  pooling and one linear head per attribute, so it has no feature map shaped like ``r`` to serve
  as Eq. 7's ``d``; it stays what it is, an attribute predictor EEAE never trained against.

Sizes. The paper works on 224-px faces with ``r`` and ``d`` of 512 x 14 x 14. Here the face is
the pipeline's 64-px aligned crop (CPU training time) and ``r`` / ``d`` are 64 x 8 x 8: three of
the external encoder's five layers halve the resolution (the paper's 224 -> 14 needs four), and
three of the FSN's six layers pool. Layer counts and roles are the paper's.

The PEN of Eq. 7 (a recognizer used in training only) is the project's faceres
(:mod:`facedeid.models.faceres`); it lives in the trainer, not here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MissingWeightsError

#: the attribute sets of the paper's experiments, by their one-letter code
ATTRIBUTE_CODES = {"g": "Male", "s": "Smiling", "b": "Big_Nose", "y": "Young", "e": "Eyeglasses"}
#: the single- and multi-attribute models of Tables IV-VII
ATTRIBUTE_SETS = ("g", "s", "b", "y", "gs", "gsb", "gsbe")
CHECKPOINT_FORMAT = "facedeid.eeae/1"
EXTERNAL_FORMAT = "facedeid.eeae_external/1"


class EEAECheckpointError(MissingWeightsError):
    """An EEAE checkpoint file is missing, damaged or of another kind."""


def attribute_names(code: str) -> list[str]:
    """``"gsb"`` -> ``["Male", "Smiling", "Big_Nose"]``; an unknown letter is refused."""
    code = code.strip().lower()
    unknown = sorted(set(code) - set(ATTRIBUTE_CODES))
    if not code or unknown:
        raise ValueError(f"attribute set {code!r}: letters must come from "
                         f"{', '.join(f'{k}={v}' for k, v in ATTRIBUTE_CODES.items())}")
    if len(set(code)) != len(code):
        raise ValueError(f"attribute set {code!r} repeats a letter")
    return [ATTRIBUTE_CODES[letter] for letter in code]


@dataclass(frozen=True)
class EEAEConfig:
    """Shapes shared by the three networks (``r``, ``y`` and ``d`` are ``latent_channels`` x
    ``image_size / 8`` x ``image_size / 8``)."""

    image_size: int = 64
    latent_channels: int = 64
    width: int = 48
    fc_width: int = 32


def _conv(channels_in: int, channels_out: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    kernel = 4 if stride == 2 else 3
    layers: list[nn.Module] = [nn.Conv2d(channels_in, channels_out, kernel, stride, 1,
                                         bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(channels_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(channels_in, channels_out, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(channels_out), nn.LeakyReLU(0.2, inplace=True))


class ExternalAutoEncoder(nn.Module):
    """Five convolutional layers down to ``r``, five back up to the face (Eq. 6)."""

    def __init__(self, config: EEAEConfig = EEAEConfig()):
        super().__init__()
        self.config = config
        w, c = config.width, config.latent_channels
        self.encoder = nn.Sequential(_conv(3, w // 2, 2), _conv(w // 2, w, 2), _conv(w, 2 * w, 2),
                                     _conv(2 * w, 2 * w), nn.Conv2d(2 * w, c, 3, 1, 1))
        self.decoder = nn.Sequential(_conv(c, 2 * w), _conv(2 * w, 2 * w), _up(2 * w, w),
                                     _up(w, w // 2),
                                     nn.ConvTranspose2d(w // 2, 3, 4, 2, 1), nn.Sigmoid())

    def encode(self, faces: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` in [0, 1] -> ``r``."""
        return self.encoder((faces - 0.5) / 0.25)

    def decode(self, representation: torch.Tensor) -> torch.Tensor:
        return self.decoder(representation)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(faces))


class InternalAutoEncoder(nn.Module):
    """Six convolutional layers in, six out, on the external representation (``r`` -> ``y``).

    One encoder layer halves the 8 x 8 grid and one decoder layer restores it, so the inner
    code is narrower than ``r`` and the network cannot simply pass ``r`` (and its identity)
    through; the output layer is linear because ``d`` is a feature map, not an image.
    """

    def __init__(self, config: EEAEConfig = EEAEConfig()):
        super().__init__()
        c, w = config.latent_channels, config.width
        self.encoder = nn.Sequential(_conv(c, w), _conv(w, w), _conv(w, w, 2), _conv(w, w),
                                     _conv(w, w), _conv(w, w))
        self.decoder = nn.Sequential(_conv(w, w), _conv(w, w), _up(w, w), _conv(w, w),
                                     _conv(w, w), nn.Conv2d(w, c, 3, 1, 1))

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(representation))


class FeatureSelectionNetwork(nn.Module):
    """FSN (Fig. 6): six shared layers -> ``d``; one three-layer FC group per attribute.

    ``forward`` gives ``(N, m, 2)`` logits (softmax over the last axis is Eq. 4's ``t̂'``).
    """

    def __init__(self, attributes: list[str], config: EEAEConfig = EEAEConfig()):
        super().__init__()
        self.attributes = list(attributes)
        self.config = config
        w, c = config.width, config.latent_channels
        pool = nn.MaxPool2d(2)
        self.shared = nn.Sequential(
            nn.Sequential(_conv(3, w // 2), pool), nn.Sequential(_conv(w // 2, w), pool),
            nn.Sequential(_conv(w, 3 * w // 2), pool), _conv(3 * w // 2, 3 * w // 2),
            _conv(3 * w // 2, 3 * w // 2), _conv(3 * w // 2, c))
        grid = config.image_size // 8
        self.groups = nn.ModuleList(
            nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(c * grid * grid, config.fc_width),
                          nn.LeakyReLU(0.2, inplace=True), nn.Dropout(0.5),
                          nn.Linear(config.fc_width, config.fc_width),
                          nn.LeakyReLU(0.2, inplace=True), nn.Linear(config.fc_width, 2))
            for _ in self.attributes)

    def features(self, faces: torch.Tensor) -> torch.Tensor:
        """``d``: the shared feature map of ``(N, 3, S, S)`` faces in [0, 1]."""
        return self.shared((faces - 0.5) / 0.25)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([group(features) for group in self.groups], dim=1)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(faces))

    @torch.no_grad()
    def predict(self, faces: torch.Tensor) -> torch.Tensor:
        """``(N, m)`` bool: attribute present (class 1 more likely than class 0)."""
        was_training = self.training
        self.eval()
        logits = self(faces)
        self.train(was_training)
        return logits.argmax(dim=2).bool()


class PrivacyRemovalNetwork(nn.Module):
    """PRN: the frozen external encoder, the internal autoencoder, the frozen external decoder.

    With ``internal=None`` it is the SPRN ablation (Eq. 8): one simple autoencoder (the external
    architecture, trained whole with the multiple loss) and no embedded network.
    """

    def __init__(self, external: ExternalAutoEncoder, internal: InternalAutoEncoder | None):
        super().__init__()
        self.external = external
        self.internal = internal

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        representation = self.external.encode(faces)
        if self.internal is not None:
            representation = self.internal(representation)
        return self.external.decode(representation)

    @torch.no_grad()
    def anonymize(self, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """``(N, S, S, 3) uint8`` aligned faces -> de-identified faces, same shape."""
        from .tensors import crops_to_tensor, tensor_to_crops

        self.eval()
        out = [tensor_to_crops(self(crops_to_tensor(crops[start:start + batch_size])))
               for start in range(0, len(crops), batch_size)]
        return np.concatenate(out) if out else crops.copy()


def _half_state(module: nn.Module) -> dict:
    """fp16 weights for shipping (BatchNorm's counters stay integers)."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in module.state_dict().items()}


def _load_state(module: nn.Module, state: dict) -> nn.Module:
    reference = module.state_dict()
    module.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    return module.eval()


def save_external(path: str | Path, external: ExternalAutoEncoder, meta: dict) -> Path:
    from .checkpoint_files import save_payload
    return save_payload(Path(path), {"format": EXTERNAL_FORMAT,
                                     "config": asdict(external.config),
                                     "external": _half_state(external), **meta})


def load_external(path: str | Path) -> tuple[ExternalAutoEncoder, dict]:
    payload = _read(path, EXTERNAL_FORMAT, "trained EEAE external autoencoder")
    external = ExternalAutoEncoder(EEAEConfig(**payload["config"]))
    return _load_state(external, payload["external"]), payload


def save_eeae(path: str | Path, attributes: str, fsn: FeatureSelectionNetwork,
              internal: InternalAutoEncoder | None, sprn: ExternalAutoEncoder | None,
              meta: dict) -> Path:
    """One attribute set's models: its FSN, its PRN's internal autoencoder and, when trained,
    its SPRN (the external autoencoder lives in its own file, shared by every set)."""
    from .checkpoint_files import save_payload
    payload = {"format": CHECKPOINT_FORMAT, "attributes": attributes,
               "attribute_names": fsn.attributes, "config": asdict(fsn.config),
               "fsn": _half_state(fsn),
               "internal": None if internal is None else _half_state(internal),
               "sprn": None if sprn is None else _half_state(sprn), **meta}
    return save_payload(Path(path), payload)


def _read(path: str | Path, expected: str, what: str) -> dict:
    from .checkpoint_files import read_payload
    return read_payload(Path(path), expected, what, "train it with `facedeid train eeae`",
                        EEAECheckpointError)


def load_eeae(path: str | Path) -> tuple[dict, dict]:
    """``({"fsn": ..., "internal": ... | None, "sprn": ... | None}, payload)`` for one set."""
    payload = _read(path, CHECKPOINT_FORMAT, "trained EEAE attribute set")
    config = EEAEConfig(**payload["config"])
    networks = {"fsn": _load_state(FeatureSelectionNetwork(payload["attribute_names"], config),
                                   payload["fsn"])}
    networks["internal"] = None if payload["internal"] is None else \
        _load_state(InternalAutoEncoder(config), payload["internal"])
    networks["sprn"] = None if payload["sprn"] is None else \
        _load_state(ExternalAutoEncoder(config), payload["sprn"])
    return networks, payload
