"""Identity cloak (PGD against the surrogate recognizer) and the surrogate recognizer itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facedeid.errors import InvalidParameterError, MissingWeightsError
from facedeid.methods import FaceContext, create_method
from facedeid.methods.identity_cloak import pgd_identity_cloak
from facedeid.models.surrogate_recognizer import (CHECKPOINT, TRAIN_COMMAND, SurrogateRecognizer,
                                                  load_surrogate_recognizer)

from .conftest import shared_path, torch_threads


@pytest.fixture(scope="module", autouse=True)
def two_torch_threads():
    """PGD steps are the slow part; two threads, restored afterwards for the other test files."""
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def surrogate():
    if not CHECKPOINT.is_file():
        pytest.skip(f"surrogate checkpoint missing; create it with: {TRAIN_COMMAND}")
    return load_surrogate_recognizer()


@pytest.fixture(scope="module")
def aligned_faces(astronaut, astronaut_face):
    """The astronaut's aligned face, plus real celeba-id200 faces when the shared data exists."""
    from facedeid.alignment import FaceAligner
    crop = FaceAligner(128).align(astronaut, astronaut_face)
    return crop


def test_missing_checkpoint_error_names_the_training_command(tmp_path):
    with pytest.raises(MissingWeightsError, match="facedeid.training.recognizer"):
        load_surrogate_recognizer(tmp_path / "absent.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="unreadable"):
        load_surrogate_recognizer(tmp_path / "broken.pt")


def test_checkpoint_is_small_and_records_its_command(surrogate):
    assert CHECKPOINT.stat().st_size < 5e6
    assert "facedeid.training.recognizer" in surrogate.meta["command"]
    assert 0 < surrogate.meta["metrics"]["rank1_leave_one_out_test_people"] <= 1


def test_embeddings_are_unit_norm_and_size_independent(surrogate, aligned_faces):
    face = aligned_faces.pixels
    small = np.asarray(torch.nn.functional.interpolate(
        torch.from_numpy(face).permute(2, 0, 1)[None].float(), size=(112, 112), mode="bilinear",
        antialias=True)[0].permute(1, 2, 0).round().byte())
    a, b = surrogate.embed(face), surrogate.embed(small)
    assert a.shape == (1, 128)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
    assert (a @ b.T).item() > 0.9  # same face at another crop size: nearly the same embedding


@pytest.mark.shared_data
def test_surrogate_recognizes_unseen_photos_of_training_identities(surrogate):
    from facedeid.training.recognizer import load_aligned_celeba_id200, rank1_accuracy
    faces = load_aligned_celeba_id200(shared_path("celeba-id200"), cache=None, limit=180)
    train, test = faces.subset(faces.is_train), faces.subset(~faces.is_train)
    assert len(test.crops) > 10 and len(np.unique(train.identities)) >= 5
    rank1 = rank1_accuracy(surrogate.embed(test.crops), test.identities,
                           surrogate.embed(train.crops), train.identities)
    chance = 1 / len(np.unique(train.identities))
    assert rank1 > 5 * chance, rank1


def test_cloak_respects_the_linf_budget_and_mask(surrogate, aligned_faces):
    face = aligned_faces.pixels
    mask = aligned_faces.mask
    out = pgd_identity_cloak(face[None], surrogate, eps=6, steps=5, masks=mask[None],
                             rng=np.random.default_rng(0))[0]
    change = np.abs(out.astype(int) - face.astype(int))
    assert change.max() <= 6
    assert change[mask == 0].max() == 0          # nothing outside the pasted region
    assert change[mask > 0].mean() > 1           # but a real perturbation inside it


def test_cloak_pushes_the_surrogate_embedding_away_far_more_than_random_noise(surrogate,
                                                                             aligned_faces):
    face = aligned_faces.pixels
    rng = np.random.default_rng(1)
    original = surrogate.embed(face)
    cloaked = pgd_identity_cloak(face[None], surrogate, eps=8, steps=10, rng=rng)
    noise = np.clip(face.astype(int) + rng.choice([-8, 8], face.shape), 0, 255).astype(np.uint8)
    cloak_similarity = (surrogate.embed(cloaked) @ original.T).item()
    noise_similarity = (surrogate.embed(noise) @ original.T).item()
    assert noise_similarity > 0.8
    assert cloak_similarity < noise_similarity - 0.3, (cloak_similarity, noise_similarity)


def test_targeted_cloak_moves_toward_the_target(surrogate, aligned_faces):
    face = aligned_faces.pixels
    target_face = np.ascontiguousarray(face[:, ::-1, ::-1])  # a different "face": mirrored, BGR
    target = surrogate.embed(target_face)
    before = (surrogate.embed(face) @ target.T).item()
    cloaked = pgd_identity_cloak(face[None], surrogate, eps=8, steps=10, targets=target,
                                 rng=np.random.default_rng(2))
    assert (surrogate.embed(cloaked) @ target.T).item() > before + 0.2


def test_cloak_is_reproducible_for_a_seed(surrogate, aligned_faces):
    face = aligned_faces.pixels[None]
    a = pgd_identity_cloak(face, surrogate, eps=4, steps=3, rng=np.random.default_rng(5))
    b = pgd_identity_cloak(face, surrogate, eps=4, steps=3, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_registered_method_through_the_pipeline(surrogate, astronaut, astronaut_face):
    from facedeid.pipeline import Anonymizer
    result = Anonymizer(method="identity_cloak", method_params={"eps": 4, "steps": 3}).anonymize(
        astronaut.copy(), faces=[astronaut_face])
    x0, y0, x1, y1 = astronaut_face.box.astype(int)
    change = np.abs(result.image.astype(int) - astronaut.astype(int))[y0:y1, x0:x1]
    # Aligned crops are warped twice (align, paste back), which itself softens sharp edges,
    # so the image-space change is not bounded by eps pixel by pixel; on average it stays small.
    assert 0 < change.mean() < 6, change.mean()


@pytest.mark.parametrize("bad", [{"eps": 0}, {"eps": -2}, {"steps": 0}, {"target": "nowhere"}])
def test_bad_parameters_raise(bad):
    with pytest.raises(InvalidParameterError):
        create_method("identity_cloak", **bad)


def test_pure_function_rejects_a_zero_budget():
    model = SurrogateRecognizer().eval()
    with pytest.raises(InvalidParameterError, match="budget"):
        pgd_identity_cloak(np.zeros((1, 64, 64, 3), np.uint8), model, eps=0)
