"""Recognizers: dlib on real faces, a generic ONNX model built here, the embedding cache."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from facedeid.errors import MissingWeightsError
from facedeid.evaluation.recognizers import (RECOGNIZERS, EmbeddingCache, FaceRecognizer,
                                             create_recognizer, file_digest, register_recognizer)

from .conftest import shared_path


@pytest.fixture(scope="module")
def dlib_recognizer():
    return create_recognizer("dlib")


def test_dlib_embeds_at_known_box(dlib_recognizer, astronaut, astronaut_face):
    emb = dlib_recognizer.embed([astronaut, astronaut[:, ::-1].copy()],
                                [astronaut_face.box,
                                 np.array([512 - astronaut_face.box[2], astronaut_face.box[1],
                                           512 - astronaut_face.box[0], astronaut_face.box[3]])])
    assert emb.shape == (2, 128) and emb.dtype == np.float32
    assert np.isfinite(emb).all() and np.linalg.norm(emb[0]) > 0.1
    # the mirrored photo is the same person for dlib
    assert np.linalg.norm(emb[0] - emb[1]) < dlib_recognizer.threshold


def test_dlib_worker_processes_give_the_in_process_embeddings(monkeypatch, astronaut, astronaut_face):
    """Large calls go to worker processes (dlib holds the GIL); the rows and their order must be
    exactly what one process computes."""
    import facedeid.evaluation.recognizers as recognizers

    monkeypatch.setattr(recognizers, "POOL_MIN_CHIPS", 4)
    images = [astronaut, astronaut[:, ::-1].copy(), astronaut[::-1].copy(), astronaut] * 2
    flipped = np.array([512 - astronaut_face.box[2], astronaut_face.box[1],
                        512 - astronaut_face.box[0], astronaut_face.box[3]])
    upside = np.array([astronaut_face.box[0], 512 - astronaut_face.box[3],
                       astronaut_face.box[2], 512 - astronaut_face.box[1]])
    boxes = [astronaut_face.box, flipped, upside, astronaut_face.box] * 2
    pooled = recognizers.DlibRecognizer(workers=2)
    try:
        rows = pooled.embed(images, boxes)
        assert pooled._pool is not None  # the workers really ran
    finally:
        pooled.close()
    alone = recognizers.DlibRecognizer(workers=1).embed(images, boxes)
    assert np.array_equal(rows, alone)
    assert np.abs(rows[0] - rows[2]).max() > 0.01  # rows differ, so order is checked


def test_reference_images_locate_landmarks_on_the_original(dlib_recognizer, astronaut, astronaut_face):
    """With the original as reference, a face whose eyes are blacked out is aligned like the
    original, so identical pixels elsewhere give a different result than self-located landmarks."""
    hidden = astronaut.copy()
    x0, y0, x1, y1 = astronaut_face.box.astype(int)
    hidden[y0:y1, x0:x1] = 0
    own = dlib_recognizer.chips([hidden], [astronaut_face.box])[0]
    ref = dlib_recognizer.chips([hidden], [astronaut_face.box], reference_images=[astronaut])[0]
    clean = dlib_recognizer.chips([astronaut], [astronaut_face.box])[0]
    visible = (ref.astype(int).sum(2) > 30)  # chip pixels outside the blacked-out box
    assert 0.05 < visible.mean() < 0.95
    agree_ref = np.mean(np.abs(ref.astype(int) - clean.astype(int))[visible] <= 2)
    agree_own = np.mean(np.abs(own.astype(int) - clean.astype(int))[visible] <= 2)
    assert agree_ref > 0.9 > agree_own
    with pytest.raises(ValueError):
        dlib_recognizer.embed([astronaut], [astronaut_face.box, astronaut_face.box])


def test_dlib_same_and_different_people(dlib_recognizer):
    shared_path("celeba-id200")
    from facedeid.detection import create_detector
    from facedeid.io.datasets import load_dataset

    records = load_dataset("celeba-id200", split="test").records[:60]
    by_id: dict = {}
    for r in records:
        by_id.setdefault(r.identity, []).append(r)
    pairs = [v[:2] for v in by_id.values() if len(v) >= 2][:3]
    assert pairs, "expected repeated identities among the first 60 test images"
    detector = create_detector("centerface")
    images = [r.load() for pair in pairs for r in pair]
    boxes = [max(detector.detect(im), key=lambda f: f.width).box for im in images]
    emb = dlib_recognizer.embed(images, boxes)
    same = [np.linalg.norm(emb[2 * k] - emb[2 * k + 1]) for k in range(len(pairs))]
    different = [np.linalg.norm(emb[0] - emb[2 * k]) for k in range(1, len(pairs))]
    assert max(same) < 0.6 < min(different)


def _tiny_onnx(path, size=16, dim=4):
    """A linear embedding model (N, 3, size, size) -> (N, dim), built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(3 * size * size, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "weight"], ["embedding"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return weight


def test_onnx_recognizer_preprocessing(tmp_path, astronaut, astronaut_face):
    path = tmp_path / "tiny.onnx"
    weight = _tiny_onnx(path)
    recognizer = create_recognizer("onnx", model_path=path, input_size=16, mean=100.0, std=50.0,
                                   channel_order="BGR", align=False, metric="euclidean")
    emb = recognizer.embed([astronaut], [astronaut_face.box])
    x0, y0, x1, y1 = np.round(astronaut_face.box).astype(int)
    crop = cv2.resize(astronaut[y0:y1, x0:x1], (16, 16), interpolation=cv2.INTER_AREA)
    expected = ((crop[..., ::-1].astype(np.float32) - 100) / 50).transpose(2, 0, 1).reshape(1, -1) @ weight
    np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-3)
    # aligned + cosine: unit-norm rows, and the known landmarks are used as given
    aligned = create_recognizer("onnx", model_path=path, input_size=16)
    unit = aligned.embed([astronaut, astronaut], [astronaut_face, astronaut_face])
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit[0], unit[1], rtol=1e-5)
    assert aligned.name != recognizer.name  # different preprocessing -> different cache key
    with pytest.raises(MissingWeightsError, match="not found"):
        create_recognizer("onnx", model_path=tmp_path / "absent.onnx")


def test_registry_is_open():
    class Constant(FaceRecognizer):
        name = "constant"

        def embed(self, images, boxes, reference_images=None):
            return np.zeros((len(images), 3), np.float32)

    register_recognizer("constant-test", Constant, "test only")
    try:
        assert create_recognizer("constant-test").embed([None, None], [0, 0]).shape == (2, 3)
    finally:
        RECOGNIZERS.pop("constant-test")
    with pytest.raises(ValueError, match="unknown recognizer"):
        create_recognizer("nope")


def test_embedding_cache_roundtrip(tmp_path):
    image_file = tmp_path / "a.bin"
    image_file.write_bytes(b"pixels")
    digest = file_digest(image_file)
    cache = EmbeddingCache(tmp_path / "cache")
    assert cache.get(digest, "dlib", "centerface") is None
    cache.put(digest, "dlib", "centerface", np.arange(4.0), np.array([1, 2, 3, 4]))
    embedding, box = cache.get(digest, "dlib", "centerface")
    np.testing.assert_array_equal(embedding, np.arange(4.0))
    np.testing.assert_array_equal(box, [1, 2, 3, 4])
    assert cache.get(digest, "dlib", "haar") is None  # another detector never reuses an entry
    assert cache.get(digest, "onnx-x", "centerface") is None
    image_file.write_bytes(b"other pixels")
    assert cache.get(file_digest(image_file), "dlib", "centerface") is None
    assert (cache.hits, cache.misses) == (1, 4)
    assert EmbeddingCache(None).get(digest, "dlib", "centerface") is None


def test_surrogate_recognizer_aligns_on_the_reference_face(astronaut, astronaut_face):
    """The "surrogate" attacker takes landmarks from the face found at the known box on the
    reference (original) image, so wiping the face does not move its alignment."""
    pytest.importorskip("torch")
    surrogate = create_recognizer("surrogate")
    box = astronaut_face.box
    wiped = astronaut.copy()
    x0, y0, x1, y1 = np.round(box).astype(int)
    wiped[y0:y1, x0:x1] = 128  # no face left for a detector on this image
    with_reference = surrogate.aligned([wiped], [box], reference_images=[astronaut])[0]
    own = surrogate.aligned([astronaut], [box])[0]
    on_wiped = surrogate.aligned([wiped], [box])[0]  # nothing found: landmarks from the box
    # Pixels of the crop well away from the wiped box (bilinear sampling blurs its edge) are
    # the same as when the face is aligned on itself: the same landmarks were used.
    grey = (with_reference == 128).all(axis=-1).astype(np.uint8)
    outside = cv2.dilate(grey, np.ones((15, 15), np.uint8)) == 0
    assert outside.mean() > 0.05
    np.testing.assert_array_equal(with_reference[outside], own[outside])
    assert not np.array_equal(with_reference, on_wiped)
    embedding = surrogate.embed([astronaut], [box])
    assert embedding.shape == (1, 128)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-4)
