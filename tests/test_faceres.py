"""faceres: the tfjs graph reader, the network against the tfjs runtime, and the recognizer."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import shared_path

REFERENCE = Path(__file__).parent / "data" / "faceres_reference.npz"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def faceres():
    """The installed network; the test skips (naming the install command) when it is absent."""
    from facedeid.errors import MissingWeightsError
    from facedeid.models.faceres import load_faceres
    try:
        return load_faceres()
    except MissingWeightsError as error:
        pytest.skip(f"faceres model files are not installed; run `make install` "
                    f"(npm-packs @vladmandic/human@3.3.6 into the venv). {error}")


# -- the tfjs graph reader on small graphs written here ----------------------------------------
def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write_graph(folder: Path, nodes: list[dict], weights: dict[str, np.ndarray],
                 quantize: str | None = None) -> Path:
    """A tfjs graph model (model.json + one shard) with float32 or float16 weights."""
    specs, chunks = [], []
    for name, value in weights.items():
        spec = {"name": name, "shape": list(value.shape), "dtype": "float32"}
        if quantize == "float16":
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            chunks.append(value.astype(np.float16).tobytes())
        else:
            chunks.append(value.astype(np.float32).tobytes())
        specs.append(spec)
    (folder / "group1-shard1of1.bin").write_bytes(b"".join(chunks))
    document = {"format": "graph-model", "modelTopology": {"node": nodes},
                "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": specs}]}
    path = folder / "model.json"
    path.write_text(json.dumps(document))
    return path


def _placeholder(name="x"):
    return {"name": name, "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}}}


def _const(name):
    return {"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}}


def _conv_attrs(stride: int, padding: str = "SAME") -> dict:
    return {"strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}},
            "padding": {"s": _b64(padding)}, "data_format": {"s": _b64("NHWC")},
            "dilations": {"list": {"i": ["1", "1", "1", "1"]}}}


def test_unknown_op_is_refused_with_its_name(tmp_path):
    from facedeid.models.tfjs_graph import TfjsGraph, UnsupportedGraphError

    nodes = [_placeholder(), {"name": "mystery", "op": "FancyWarp", "input": ["x"]}]
    path = _write_graph(tmp_path, nodes, {})
    with pytest.raises(UnsupportedGraphError, match="FancyWarp.*mystery"):
        TfjsGraph(path, outputs=["mystery"])


def test_unknown_fused_activation_is_refused(tmp_path):
    import torch

    from facedeid.models.tfjs_graph import TfjsGraph, UnsupportedGraphError

    nodes = [_placeholder(), _const("w"), _const("b"),
             {"name": "y", "op": "_FusedMatMul", "input": ["x", "w", "b"],
              "attr": {"fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Gelu")]}}}}]
    graph = TfjsGraph(_write_graph(tmp_path, nodes, {"w": np.eye(2), "b": np.zeros(2)}),
                      outputs=["y"])
    with pytest.raises(UnsupportedGraphError, match="Gelu"):
        graph(torch.zeros(1, 2))


def test_same_padding_is_tensorflows_asymmetric_one(tmp_path):
    """A stride-2 3x3 convolution on a 4x4 input: TF pads 0 rows before and 1 after, so the
    first output sees input rows/cols 0..2 — a symmetric pad would centre it on row 0."""
    import torch

    from facedeid.models.tfjs_graph import TfjsGraph

    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[0, 0] = 1.0  # picks the window's top-left pixel
    nodes = [_placeholder(), _const("k"),
             {"name": "y", "op": "Conv2D", "input": ["x", "k"], "attr": _conv_attrs(2)}]
    graph = TfjsGraph(_write_graph(tmp_path, nodes, {"k": kernel}), outputs=["y"])
    image = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4, 1)
    out = graph(image)["y"][0, :, :, 0]
    # windows start at rows/cols 0 and 2 (no padding before): top-left picks are x[0,0], x[0,2],
    # x[2,0], x[2,2]
    assert out.tolist() == [[0.0, 2.0], [8.0, 10.0]]


def test_fused_ops_equal_their_unfused_chain(tmp_path):
    """_FusedConv2D / FusedDepthwiseConv2dNative with BiasAdd + Relu6 compute exactly what
    Conv2D -> BiasAdd -> Relu6 compute, with float16-stored weights."""
    import torch

    from facedeid.models.tfjs_graph import TfjsGraph

    rng = np.random.default_rng(0)
    weights = {"k": rng.normal(size=(3, 3, 4, 6)), "dk": rng.normal(size=(3, 3, 4, 2)),
               "b": rng.normal(size=6), "db": rng.normal(size=8)}
    fused = {"fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu6")]}},
             "num_args": {"i": "1"}}
    nodes = [_placeholder(), *(_const(n) for n in weights),
             {"name": "fused", "op": "_FusedConv2D", "input": ["x", "k", "b"],
              "attr": {**_conv_attrs(2), **fused}},
             {"name": "conv", "op": "Conv2D", "input": ["x", "k"], "attr": _conv_attrs(2)},
             {"name": "biased", "op": "BiasAdd", "input": ["conv", "b"]},
             {"name": "plain", "op": "Relu6", "input": ["biased"]},
             {"name": "dfused", "op": "FusedDepthwiseConv2dNative", "input": ["x", "dk", "db"],
              "attr": {**_conv_attrs(1), **fused}},
             {"name": "dconv", "op": "DepthwiseConv2dNative", "input": ["x", "dk"],
              "attr": _conv_attrs(1)},
             {"name": "dbiased", "op": "AddV2", "input": ["dconv", "db"]},
             {"name": "dplain", "op": "Relu6", "input": ["dbiased"]}]
    graph = TfjsGraph(_write_graph(tmp_path, nodes, weights, quantize="float16"),
                      outputs=["fused", "plain", "dfused", "dplain"])
    assert torch.equal(graph.constant("k"),
                       torch.from_numpy(weights["k"].astype(np.float16).astype(np.float32)))
    out = graph(torch.from_numpy(rng.normal(size=(2, 7, 7, 4)).astype(np.float32)) * 3)
    assert out["fused"].shape == (2, 4, 4, 6) and out["dfused"].shape == (2, 7, 7, 8)
    assert torch.allclose(out["fused"], out["plain"], atol=1e-6)
    assert torch.allclose(out["dfused"], out["dplain"], atol=1e-6)
    assert 0 < float((out["plain"] == 6).float().mean()) < 1  # the clip was exercised


def test_truncated_shard_is_refused(tmp_path):
    from facedeid.models.tfjs_graph import TfjsGraph, UnsupportedGraphError

    path = _write_graph(tmp_path, [_placeholder(), _const("w"),
                                   {"name": "y", "op": "MatMul", "input": ["x", "w"]}],
                        {"w": np.ones((4, 4))})
    shard = tmp_path / "group1-shard1of1.bin"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(UnsupportedGraphError, match="truncated"):
        TfjsGraph(path, outputs=["y"])


# -- the faceres network ---------------------------------------------------------------------------
def test_matches_the_tfjs_runtime_on_ten_inputs(faceres):
    """Reference from TensorFlow.js 4.22 (CPU backend): benchmarks/faceres_reference.py."""
    import torch

    from facedeid.models.faceres import AGE_NODE, DESCRIPTOR_NODE, GENDER_NODE, preprocess_uint8

    reference = np.load(REFERENCE)
    assert reference["inputs"].shape == (10, 224, 224, 3)
    with torch.no_grad():
        raw = faceres.run_graph(preprocess_uint8(reference["inputs"]))
    for key, node in (("descriptor", DESCRIPTOR_NODE), ("male_probability", GENDER_NODE),
                      ("age_softmax", AGE_NODE)):
        ours = raw[node].numpy().reshape(reference[key].shape)
        assert np.abs(ours - reference[key]).max(axis=tuple(range(1, ours.ndim))).max() <= 1e-4, key
    # the inputs are not degenerate: descriptors differ between them
    assert np.abs(reference["descriptor"][0] - reference["descriptor"][6]).max() > 0.1


def test_onnxruntime_path_matches_the_tfjs_runtime_too(faceres):
    """analyze() runs the traced graph in ONNX Runtime: same outputs as tfjs within 1e-4."""
    reference = np.load(REFERENCE)
    assert faceres.inference_session() is not None  # the fast path is really taken
    analyzed = faceres.analyze(reference["inputs"], batch_size=4)  # 10 crops: a ragged last batch
    descriptor = reference["descriptor"].reshape(10, -1)
    unit = descriptor / np.linalg.norm(descriptor, axis=1, keepdims=True)
    assert np.abs(analyzed.descriptor.numpy() - unit).max() <= 1e-4
    assert np.abs(analyzed.male_probability.numpy()
                  - reference["male_probability"].reshape(10)).max() <= 1e-4


def test_forward_is_differentiable_and_agrees_with_the_uint8_path(faceres):
    import torch

    reference = np.load(REFERENCE)
    crops = reference["inputs"][:2]
    faces = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    output = faceres(faces)
    assert output.descriptor.shape == (2, 1024)
    assert torch.allclose(output.descriptor.norm(dim=1), torch.ones(2), atol=1e-5)
    (output.descriptor[0] @ output.descriptor[1] + output.male_probability.sum()
     + output.age.sum() / 100).backward()
    assert faces.grad is not None and torch.isfinite(faces.grad).all()
    assert faces.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every face receives gradient
    analyzed = faceres.analyze(crops)
    assert torch.allclose(output.descriptor.detach(), analyzed.descriptor, atol=1e-5)
    assert torch.allclose(output.age.detach(), analyzed.age, atol=1e-3)


def test_recognizer_is_registered_batched_and_unit_norm(faceres, astronaut, astronaut_face):
    from facedeid.evaluation.recognizers import RECOGNIZERS, create_recognizer

    assert "faceres" in RECOGNIZERS
    recognizer = create_recognizer("faceres", batch_size=2)
    assert recognizer.metric == "cosine" and 0 < recognizer.threshold < 1
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    x0, y0, x1, y1 = astronaut_face.box
    flipped_box = np.array([512 - x1, y0, 512 - x0, y1])
    images = [astronaut, flipped, astronaut]
    embeddings = recognizer.embed(images, [astronaut_face, flipped_box, astronaut_face.box])
    assert embeddings.shape == (3, 1024) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    single = create_recognizer("faceres", batch_size=1).embed([astronaut], [astronaut_face])
    np.testing.assert_allclose(single[0], embeddings[0], atol=1e-5)  # batching changes nothing
    assert 1 - embeddings[0] @ embeddings[1] < recognizer.threshold  # a mirror is the same person
    attributes = recognizer.attributes([astronaut], [astronaut_face])
    assert attributes["male_probability"][0] < 0.5  # Eileen Collins
    assert 20 < attributes["age"][0] < 60


def test_same_person_is_closer_than_different_people_on_celeba(faceres, centerface):
    """Two photos each of four test identities (identity_split_disjoint.txt): same-person pairs
    outrank different-person pairs (CelebA's poses and ages make a few orderings hard, so the
    bound is 90 % of orderings, not all), by a clear mean margin."""
    from facedeid.detection import main_face
    from facedeid.evaluation.recognizers import create_recognizer
    from facedeid.io.datasets import load_dataset

    root = shared_path("celeba-id200")
    split = dict(line.split() for line in (root / "identity_split_disjoint.txt").read_text()
                 .splitlines() if line.strip())
    by_identity: dict[str, list] = {}
    for record in load_dataset(root, split="all"):
        if split.get(record.name) == "test":
            by_identity.setdefault(record.identity, []).append(record)
    chosen = [records[:2] for _, records in sorted(by_identity.items())[:4]]
    images = [record.load() for pair in chosen for record in pair]
    boxes = [main_face(centerface.detect(image)).box for image in images]
    recognizer = create_recognizer("faceres")
    embeddings = recognizer.embed(images, boxes)
    similarity = embeddings @ embeddings.T
    identity = np.repeat(np.arange(len(chosen)), 2)
    same = identity[:, None] == identity[None, :]
    off_diagonal = ~np.eye(len(images), dtype=bool)
    same_scores, different_scores = similarity[same & off_diagonal], similarity[~same]
    assert (same_scores[:, None] > different_scores[None, :]).mean() >= 0.9
    assert same_scores.mean() - different_scores.mean() > 0.15
    assert np.median(1 - same_scores) < recognizer.threshold < np.median(1 - different_scores)


def test_missing_model_names_the_install_command(monkeypatch, tmp_path):
    from facedeid import assets
    from facedeid.errors import MissingWeightsError

    assets.asset_path.cache_clear()
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    try:
        with pytest.raises(MissingWeightsError, match="make install.*@vladmandic/human@3.3.6"):
            assets.asset_path("faceres_graph")
    finally:
        assets.asset_path.cache_clear()
