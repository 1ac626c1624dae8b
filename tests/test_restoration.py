"""The restoration attacker: it learns, it refuses checkpoints for other settings, and the
whole ``facedeid attack restore`` command runs on a few shared CelebA images."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from facedeid.detection.base import Face
from facedeid.errors import InvalidParameterError, MissingWeightsError
from facedeid.evaluation.restoration_attack import (checkpoint_path, load_restorer,
                                                    method_config)
from facedeid.models.restoration import RestorationUNet, attack_key
from facedeid.training.restoration import TrainConfig, l1_restoration_loss, train_restorer

from .conftest import SHARED_DATA, requires_shared

TINY = TrainConfig(epochs=5, batch_size=8, learning_rate=3e-3, perceptual_weight=0.0,
                   widths=(8, 16), holdout_fraction=0.0)


def blurred_pairs(astronaut: np.ndarray, count: int = 32, size: int = 64, dim: float = 1.0):
    """``count`` crops of a real photo and their Gaussian-blurred versions, scaled by ``dim``
    (a degradation a tiny network learns to undo in a few steps; pure deblurring takes
    hundreds), as ``(inputs, targets)`` uint8 arrays."""
    rng = np.random.default_rng(0)
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    targets = []
    for _ in range(count):
        y, x = rng.integers(0, 256 - size, 2)
        targets.append(small[y:y + size, x:x + size])
    targets = np.stack(targets)
    inputs = np.stack([(cv2.GaussianBlur(t, (7, 7), 2.0) * dim).astype(np.uint8) for t in targets])
    return inputs, targets


def test_unet_keeps_shape_and_range_and_starts_as_identity():
    model = RestorationUNet((8, 16, 32)).eval()
    x = np.random.default_rng(1).random((2, 3, 64, 64)).astype(np.float32)
    import torch
    out = model(torch.from_numpy(x))
    assert out.shape == (2, 3, 64, 64)
    # zero-initialised head: an untrained attacker returns its input
    assert torch.allclose(out, torch.from_numpy(x))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.zeros(1, 3, 62, 62))


def test_training_reduces_l1_restoration_loss(tmp_path, astronaut, one_torch_thread):
    inputs, targets = blurred_pairs(astronaut, dim=0.7)
    identities = [str(i) for i in range(len(inputs))]
    key = attack_key("blur", {"kernel_size": 7}, 64)
    meta = train_restorer(inputs, targets, identities, key, tmp_path / "a.pt", TINY, size=64,
                          progress=False)
    assert meta["epochs_done"] == 5 and len(meta["history"]) == 5
    from facedeid.evaluation.restoration_attack import load_checkpoint
    model, _ = load_checkpoint(tmp_path / "a.pt", key)
    before = l1_restoration_loss(None, inputs, targets)
    after = l1_restoration_loss(model, inputs, targets)
    assert after < 0.8 * before, (before, after)


def test_checkpoint_refuses_other_parameters(tmp_path, astronaut, one_torch_thread):
    inputs, targets = blurred_pairs(astronaut, count=8)
    key = attack_key("mosaic", method_config("mosaic", {"block_size": "8"}), 64)
    path = tmp_path / "mosaic8.pt"
    config = TrainConfig(epochs=1, batch_size=8, perceptual_weight=0.0, widths=(8, 16),
                         holdout_fraction=0.0)
    train_restorer(inputs, targets, ["a"] * 8, key, path, config, size=64, progress=False)
    # same settings, spelled differently: accepted
    assert load_restorer("mosaic", {"block_size": 8}, checkpoint=path).key == key
    with pytest.raises(InvalidParameterError) as refused:
        load_restorer("mosaic", {"block_size": "12"}, checkpoint=path)
    message = str(refused.value)
    assert "block_size=8" in message and "block_size=12" in message
    with pytest.raises(InvalidParameterError, match="blur"):
        load_restorer("blur", {}, checkpoint=path)
    # resuming into a file trained for something else is refused, never overwritten
    other = attack_key("mosaic", method_config("mosaic", {"block_size": "12"}), 64)
    with pytest.raises(InvalidParameterError):
        train_restorer(inputs, targets, ["a"] * 8, other, path, config, size=64, progress=False)
    assert load_restorer("mosaic", {"block_size": 8}, checkpoint=path).key == key
    with pytest.raises(MissingWeightsError, match="facedeid attack restore --method pixelate"):
        load_restorer("pixelate", {}, cache_dir=tmp_path)


def test_restorer_pastes_back_only_the_face(tmp_path, astronaut, astronaut_face, one_torch_thread):
    inputs, targets = blurred_pairs(astronaut, count=8)
    key = attack_key("blur", method_config("blur", {}), 64)
    path = checkpoint_path(tmp_path, key)
    config = TrainConfig(epochs=1, batch_size=8, perceptual_weight=0.0, widths=(8, 16),
                         holdout_fraction=0.0, learning_rate=0.05)
    train_restorer(inputs, targets, ["a"] * 8, key, path, config, size=64, progress=False)
    restorer = load_restorer("blur", None, cache_dir=tmp_path)  # found in the cache by key
    face = Face(box=astronaut_face.box, score=1.0, landmarks=astronaut_face.landmarks)
    image = astronaut.copy()
    restored = restorer([image], [face])[0]
    assert np.array_equal(image, astronaut)  # the input is never modified
    changed = np.abs(restored.astype(int) - astronaut.astype(int)).max(axis=2) > 0
    assert changed.any()
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0)
    # everything that changed lies around the face, nothing in the far corners of the photo
    assert xs.min() > x0 - side and xs.max() < x1 + side
    assert ys.min() > y0 - side and ys.max() < y1 + side
    # the evaluator's hook: the same attacker by spec, None for a method without one
    from facedeid.evaluation.restoration_attack import evaluator_restorer
    from facedeid.evaluation.runner import MethodSpec
    hook = evaluator_restorer(tmp_path)
    assert np.array_equal(hook(MethodSpec.parse("blur"), [image], [face])[0], restored)
    assert hook(MethodSpec.parse("mosaic"), [image], [face]) is None


@requires_shared
def test_attack_restore_cli_end_to_end(tmp_path, one_torch_thread):
    from facedeid.cli import main

    if not (SHARED_DATA / "celeba-id200" / "identity_split_disjoint.txt").is_file():
        pytest.skip("celeba-id200 identity-disjoint split absent")
    out = tmp_path / "report.json"
    argv = ["attack", "restore", "--method", "pixelate", "--param", "size=8", "--epochs", "1",
            "--limit", "16", "--test-limit", "6", "--recognizer", "dlib",
            "--cache", str(tmp_path / "cache"), "-o", str(out), "-q"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["attack_key"] == "pixelate:size=8@64"
    assert report["train"]["images"] == 16 and report["test"]["images"] == 6
    row = report["recognizers"]["dlib"]
    for probe_set in ("deidentified", "restored"):
        assert 0.0 <= row[probe_set]["rank1"] <= 1.0
        assert 0.0 <= row[probe_set]["sdr"] <= 1.0
        assert row[probe_set]["count"] == 6
    checkpoints = list((tmp_path / "cache").glob("attacker-*.pt"))
    assert len(checkpoints) == 1
    stamp = checkpoints[0].stat().st_mtime_ns
    # second run: the cached attacker is reused, not retrained
    assert main(argv) == 0
    assert checkpoints[0].stat().st_mtime_ns == stamp
    assert not list((tmp_path / "cache").glob(".*tmp*"))
