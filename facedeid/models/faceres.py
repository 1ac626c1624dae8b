"""faceres: a pre-trained MobileNet face recognizer with gender and age heads, in PyTorch.

What it is: Savchenko's multi-task MobileNet (A. V. Savchenko, "Efficient facial representations
for age, gender and identity recognition in organizing photo albums using multi-output ConvNet",
PeerJ Computer Science 5:e197, 2019; code github.com/HSE-asavchenko/HSE_FaceRec_tf), trained on
VGGFace2 for identity, then with gender and age heads. It reaches this project as the
TensorFlow.js graph model ``faceres`` inside the npm package ``@vladmandic/human@3.3.6`` (MIT),
which ``make install`` unpacks into the venv (see ``facedeid/assets.py``); it runs here through
the project's own tfjs reader, :class:`~facedeid.models.tfjs_graph.TfjsGraph`, so it is
differentiable and needs no TensorFlow. Against the TensorFlow.js 4.22 runtime (CPU backend)
the largest difference on 10 reference inputs is 2.4e-7 (``tests/test_faceres.py`` bounds it by
1e-4; the reference comes from ``benchmarks/faceres_reference.py``).

Why it exists: a second strong recognizer not trained in this project, with a different
architecture and training set from dlib's, so privacy figures do not depend on one attacker,
and a differentiable one (identity losses, adversarial cloaks).

The graph (inspect ``faceres.json``) starts with a convolution on its ``(N, 224, 224, 3)`` input
``input_1``, so all preprocessing is the caller's. This module applies the original author's
(his Keras/OpenCV pipeline, ``keras.applications`` "caffe" mode): the face box from a detector
plus a small margin, resized to 224x224, channels reversed to BGR, and the ImageNet means
``[103.939, 116.779, 123.68]`` subtracted from 0-255 values — no scaling. (``human`` itself feeds
RGB 0-255 without means; ``benchmarks/faceres_verification.py --preprocessing`` compares both.)

Outputs: ``global_pooling/Mean`` is the 1024-D descriptor (L2-normalised here, compared by
cosine), ``gender_pred/Sigmoid`` the probability that the face is male, ``age_pred/Softmax``
a distribution over ages 0-99 whose expectation is the age estimate.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..assets import asset_path
from .tfjs_graph import TfjsGraph

INPUT_SIZE = 224
DESCRIPTOR_DIM = 1024
# keras.applications "caffe" preprocessing: BGR order, ImageNet channel means, 0-255 range.
BGR_MEANS = (103.939, 116.779, 123.68)
# The author grows the detector's box by about 10 px before cropping. A fixed pixel count means
# something else at every resolution, so the margin here is a fraction of the box side: 0.08 is
# 7 px on CelebA's ~87-px CenterFace boxes. On 20 celeba-id200 *train* identities, margins of
# 0, 0.08 and 0.2, a fixed 10 px and square crops all verified 94.8-95.1 % of pairs: the choice
# matters little, the BGR-minus-means input does (RGB 0-255 gave 88.9-90.4 %).
DEFAULT_MARGIN = 0.08
DESCRIPTOR_NODE = "global_pooling/Mean"
GENDER_NODE = "gender_pred/Sigmoid"
AGE_NODE = "age_pred/Softmax"


class FaceresOutput(NamedTuple):
    """What :class:`FaceresNet` returns for ``N`` faces.

    Attributes:
        descriptor: ``(N, 1024)`` float, unit L2 norm (compare by cosine similarity).
        male_probability: ``(N,)`` float in [0, 1].
        age: ``(N,)`` float, expected age in years under the model's 0-99 distribution.
    """

    descriptor: torch.Tensor
    male_probability: torch.Tensor
    age: torch.Tensor


def preprocess(faces: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """``(N, 3, H, W)`` float RGB in [0, 1] -> ``(N, size, size, 3)`` float BGR minus ImageNet means.

    Resizing (bilinear, only when the side is not ``size``) and the colour transform are
    differentiable. ``size`` other than 224 is for training losses that trade descriptor
    fidelity for speed (the graph runs at other sides too).
    """
    if faces.dim() != 4 or faces.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) RGB faces, got shape {tuple(faces.shape)}")
    if faces.shape[-2:] != (size, size):
        faces = F.interpolate(faces, size=(size, size), mode="bilinear",
                              align_corners=False, antialias=True)
    means = faces.new_tensor(BGR_MEANS)
    return faces.flip(1).permute(0, 2, 3, 1) * 255.0 - means


def preprocess_uint8(crops: np.ndarray) -> torch.Tensor:
    """``(N, 224, 224, 3)`` uint8 RGB crops -> the graph's float32 input, without rounding loss
    (the same arithmetic ``benchmarks/faceres_reference.mjs`` does in tfjs)."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or crops.dtype != np.uint8:
        raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) uint8 crops, got "
                         f"{crops.shape} {crops.dtype}")
    bgr = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).float()
    return bgr - torch.tensor(BGR_MEANS, dtype=torch.float32)


class FaceresNet(nn.Module):
    """The faceres graph plus its pre- and post-processing.

    Args:
        model_json: the graph's ``faceres.json`` (its ``faceres.bin`` beside it); default: the
            copy ``make install`` put in the venv, SHA-256 verified.

    ``forward(faces)`` takes ``(N, 3, H, W)`` float RGB in [0, 1] (face crops, see
    :func:`crop_faces`) and returns a :class:`FaceresOutput`; gradients flow to ``faces``.

    Raises:
        MissingWeightsError: the model files are absent or corrupt (names ``make install``).
    """

    def __init__(self, model_json: str | Path | None = None):
        super().__init__()
        if model_json is None:
            asset_path("faceres_weights")  # verifies the shard the graph will read
            model_json = asset_path("faceres_graph")
        self.graph = TfjsGraph(model_json, outputs=[DESCRIPTOR_NODE, GENDER_NODE, AGE_NODE])
        self.register_buffer("ages", torch.arange(100, dtype=torch.float32))
        self._session = None  # ONNX Runtime session, built on first analyze()
        self.eval()
        self.requires_grad_(False)

    def run_graph(self, graph_input: torch.Tensor) -> dict[str, torch.Tensor]:
        """The raw graph outputs for an already preprocessed ``(N, 224, 224, 3)`` input."""
        return self.graph(graph_input)

    def forward(self, faces: torch.Tensor) -> FaceresOutput:
        return self.postprocess(self.run_graph(preprocess(faces)))

    def postprocess(self, raw: dict[str, torch.Tensor]) -> FaceresOutput:
        return FaceresOutput(F.normalize(raw[DESCRIPTOR_NODE], dim=1),
                             raw[GENDER_NODE].reshape(-1),
                             raw[AGE_NODE] @ self.ages)

    @torch.no_grad()
    def analyze(self, crops: np.ndarray, batch_size: int = 32) -> FaceresOutput:
        """``(N, 224, 224, 3)`` uint8 RGB crops -> :class:`FaceresOutput` of CPU tensors, one
        forward pass per ``batch_size`` crops.

        No gradients are needed here, so the pass runs in ONNX Runtime (see
        :meth:`inference_session`) when it can: ~1.8x less CPU per face than the PyTorch
        graph, and it releases the GIL, so an evaluator's other recognizer runs beside it.
        """
        session = self.inference_session()
        parts = []
        for start in range(0, len(crops), batch_size):
            graph_input = preprocess_uint8(crops[start:start + batch_size])
            if session is None:
                raw = self.run_graph(graph_input)
            else:
                values = session.run(list(_OUTPUT_NODES), {"faces": graph_input.numpy()})
                raw = {node: torch.from_numpy(value) for node, value in zip(_OUTPUT_NODES, values)}
            parts.append(self.postprocess(raw))
        if not parts:
            return FaceresOutput(torch.zeros(0, DESCRIPTOR_DIM), torch.zeros(0), torch.zeros(0))
        return FaceresOutput(*(torch.cat(column) for column in zip(*parts)))


    def inference_session(self):
        """An ONNX Runtime session of this graph (built once, in memory, by tracing the PyTorch
        graph), or ``None`` where the export fails — then :meth:`analyze` stays in PyTorch.

        One intra-op thread: the evaluator runs dlib's recognizer on the other core. The traced
        model matches the PyTorch graph to ~1e-5 on the descriptor
        (``tests/test_faceres.py``)."""
        if self._session is False:
            return None
        if self._session is None:
            self._session = _export_session(self) or False
        return self._session or None


_OUTPUT_NODES = (DESCRIPTOR_NODE, GENDER_NODE, AGE_NODE)


class _GraphOutputs(nn.Module):
    """The graph as a module with a tuple output, the form ``torch.onnx.export`` traces."""

    def __init__(self, net: "FaceresNet"):
        super().__init__()
        self.net = net

    def forward(self, graph_input: torch.Tensor):
        raw = self.net.run_graph(graph_input)
        return tuple(raw[node] for node in _OUTPUT_NODES)


def _export_session(net: "FaceresNet"):
    import io
    import logging
    import warnings

    try:
        import onnxruntime
        buffer = io.BytesIO()
        example = torch.zeros(1, INPUT_SIZE, INPUT_SIZE, 3)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape maths
            torch.onnx.export(_GraphOutputs(net), (example,), buffer, dynamo=False,
                              input_names=["faces"], output_names=list(_OUTPUT_NODES),
                              dynamic_axes={"faces": {0: "n"}}, opset_version=17)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(buffer.getvalue(), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - the PyTorch graph still works
        logging.getLogger(__name__).warning("faceres: ONNX Runtime export failed (%s); "
                                            "running in PyTorch", error)
        return None


class ResizedFaceres:
    """faceres on aligned crops resized to ``size`` px: faces -> unit descriptors, differentiable.

    What the trainers and generator-based methods use as an identity network on the 64-px
    aligned crops (the EEAE PEN, the identity generator's identity encoder): below 224 px a
    step costs less, at some loss of descriptor fidelity (``size`` is recorded with the model).
    """

    def __init__(self, size: int = INPUT_SIZE):
        self.net, self.size = load_faceres(), size

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net.postprocess(self.net.run_graph(preprocess(faces, self.size))).descriptor

    def descriptors(self, crops: np.ndarray, cache: Path | None = None,
                    batch_size: int = 64) -> np.ndarray:
        """Unit descriptors of ``(N, S, S, 3) uint8`` crops, cached by content and size."""
        import hashlib

        from .tensors import crops_to_tensor
        path = None
        if cache is not None:
            digest = hashlib.sha256(crops.tobytes()).hexdigest()[:16]
            path = Path(cache) / f"pen_faceres{self.size}_{digest}.npy"
            if path.is_file():
                return np.load(path)
        with torch.no_grad():
            out = [self(crops_to_tensor(crops[i:i + batch_size])).numpy()
                   for i in range(0, len(crops), batch_size)]
        out = np.concatenate(out) if out else np.zeros((0, DESCRIPTOR_DIM), np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial.npy")
            np.save(partial, out)
            partial.replace(path)
        return out


def margin_box(box: Sequence[float], margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """``x0, y0, x1, y1`` grown by ``margin`` x its width/height on every side."""
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy])


def crop_faces(images: Sequence[np.ndarray], boxes: Sequence, margin: float = DEFAULT_MARGIN,
               size: int = INPUT_SIZE) -> np.ndarray:
    """``(N, size, size, 3)`` uint8 crops: each box plus ``margin``, clipped to its image (as
    the author's pipeline does), resized with bilinear interpolation.

    Args:
        images: ``(H, W, 3)`` uint8 RGB images.
        boxes: ``(4,)`` ``x0, y0, x1, y1`` boxes or :class:`~facedeid.detection.Face` objects.
    """
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
    crops = np.zeros((len(images), size, size, 3), np.uint8)
    for index, (image, face) in enumerate(zip(images, boxes)):
        height, width = image.shape[:2]
        x0, y0, x1, y1 = np.round(margin_box(getattr(face, "box", face), margin)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"face box {np.asarray(getattr(face, 'box', face)).tolist()} lies "
                             f"outside its {width}x{height} image")
        crops[index] = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (size, size),
                                  interpolation=cv2.INTER_LINEAR)
    return crops


_CACHE: dict[str, FaceresNet] = {}


def load_faceres(model_json: str | Path | None = None) -> FaceresNet:
    """A shared :class:`FaceresNet` (loaded once per process and path), in eval mode, frozen."""
    key = str(Path(model_json).resolve()) if model_json is not None else "<installed>"
    if key not in _CACHE:
        _CACHE[key] = FaceresNet(model_json)
    return _CACHE[key]
