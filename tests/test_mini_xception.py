"""The h5py -> PyTorch port of the FER2013 mini-Xception (facedeid.models.mini_xception)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facedeid.models.mini_xception import EXPRESSIONS, keras_layer_graph, load_mini_xception, \
    preprocess_gray, same_padding

from .conftest import shared_path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return load_mini_xception()


@pytest.fixture(scope="module")
def hdf5_path():
    from facedeid.assets import asset_path
    return asset_path("fer_mini_xception")


def test_tf_same_padding_is_asymmetric_for_stride_two():
    assert same_padding(60, 3, 2) == (0, 1)   # TF puts the odd pixel after
    assert same_padding(15, 3, 2) == (1, 1)
    assert same_padding(60, 1, 2) == (0, 0)
    assert same_padding(16, 3, 1) == (1, 1)


def test_first_conv_and_batchnorm_match_an_independent_numpy_computation(model, hdf5_path):
    """Recompute conv2d_1 + its BN straight from the raw hdf5 arrays, in Keras's HWIO layout."""
    import h5py

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)
    x = (gray / 255.0 - 0.5) * 2.0
    with h5py.File(hdf5_path, "r") as h5:
        graph = keras_layer_graph(h5)
        bn_name = next(name for name, kind, inputs in graph
                       if kind == "BatchNormalization" and inputs == ["conv2d_1"])
        kernel = np.asarray(h5["model_weights/conv2d_1/conv2d_1_1/kernel:0"])  # (3, 3, 1, 8)
        bn = {key: np.asarray(h5[f"model_weights/{bn_name}/{bn_name}_1/{key}:0"])
              for key in ("gamma", "beta", "moving_mean", "moving_variance")}
    conv = np.zeros((62, 62, kernel.shape[3]))
    for di in range(3):
        for dj in range(3):
            conv += x[di:di + 62, dj:dj + 62, None] * kernel[di, dj, 0][None, None, :]
    expected = bn["gamma"] * (conv - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) \
        + bn["beta"]
    with torch.no_grad():
        actual = model.bn1(model.conv1(preprocess_gray(gray)))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_port_is_differentiable_and_outputs_logits(model):
    x = torch.zeros(2, 1, 64, 64, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, len(EXPRESSIONS))
    logits[:, 3].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    probabilities = model.probabilities(x.detach())
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))


def test_port_accuracy_on_fer2013_private_test(model):
    """A few hundred PrivateTest images: accuracy near the reported 0.657, far above chance."""
    import cv2

    root = shared_path("fer2013", "test")
    images, labels = [], []
    for label, expression in enumerate(EXPRESSIONS):
        for path in sorted((root / expression).iterdir())[:50]:
            gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            images.append(cv2.resize(gray, (64, 64)))
            labels.append(label)
    with torch.no_grad():
        predicted = model(preprocess_gray(np.stack(images))).argmax(dim=1).numpy()
    accuracy = float((predicted == np.asarray(labels)).mean())
    assert 0.55 <= accuracy <= 0.80, accuracy
    happy = np.asarray(labels) == EXPRESSIONS.index("happy")
    assert (predicted[happy] == EXPRESSIONS.index("happy")).mean() > 0.75  # the easy class
