"""k-Same family: the clustering is Newton et al.'s, and the 1/k bound holds against dlib on real faces."""
from __future__ import annotations

import numpy as np
import pytest

from facedeid.errors import InvalidParameterError
from facedeid.methods import FaceContext, create_method
from facedeid.methods.ksame import (EigenFaces, fit_gallery, k_same_clusters, k_same_eigen,
                                    k_same_pixel, k_same_select, k_same_with_gallery)

from .conftest import shared_path


def _faces(n=13, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_clusters_follow_the_k_same_listing():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(23, 5))
    k = 4
    clusters = k_same_clusters(features, k)
    members = np.concatenate(clusters)
    assert sorted(members.tolist()) == list(range(23))                 # a partition
    assert all(k <= len(c) < 2 * k for c in clusters)                   # k .. 2k-1
    assert len(clusters[-1]) == 23 - k * (len(clusters) - 1)            # remainder joins the last
    # first cluster: face 0 and its k-1 nearest faces
    distances = np.sum((features - features[0]) ** 2, axis=1)
    assert set(clusters[0].tolist()) == set(np.argsort(distances)[:k].tolist())
    # second cluster: first remaining face and its nearest among the remaining
    remaining = np.setdiff1d(np.arange(23), clusters[0])
    anchor = remaining[0]
    d2 = np.sum((features[remaining] - features[anchor]) ** 2, axis=1)
    assert set(clusters[1].tolist()) == set(remaining[np.argsort(d2)[:k]].tolist())


@pytest.mark.parametrize("k", [2, 3, 5])
def test_pixel_outputs_are_cluster_averages_each_repeated_k_times(k):
    faces = _faces()
    out = k_same_pixel(faces, k)
    assert out.shape == faces.shape and out.dtype == np.uint8
    _, counts = np.unique(out.reshape(len(out), -1), axis=0, return_counts=True)
    assert counts.min() >= k
    for cluster in k_same_clusters(faces.reshape(len(faces), -1).astype(float), k):
        expected = np.rint(faces[cluster].astype(float).mean(0))
        np.testing.assert_array_equal(out[cluster[0]], expected)


def test_eigen_outputs_repeat_k_times_and_live_in_the_eigenspace():
    faces = _faces(n=20)
    out = k_same_eigen(faces, 4, n_components=6)
    _, counts = np.unique(out.reshape(len(out), -1), axis=0, return_counts=True)
    assert counts.min() >= 4
    eigen = EigenFaces(faces, 6)
    # reconstruction of the average coefficients == projection of the pixel average
    cluster = k_same_clusters(eigen.project(faces), 4)[0]
    expected = eigen.reconstruct(eigen.project(faces[cluster]).mean(0, keepdims=True))[0]
    np.testing.assert_array_equal(out[cluster[0]], expected)


def test_select_never_mixes_groups():
    faces = _faces(n=16)
    groups = np.array([0] * 8 + [1] * 8)
    faces[groups == 1] = np.clip(faces[groups == 1].astype(int) // 4, 0, 255)  # darker group
    out = k_same_select(faces, 3, groups)
    for label in (0, 1):
        part = np.flatnonzero(groups == label)
        lo, hi = faces[part].min(0), faces[part].max(0)
        assert ((out[part] >= lo) & (out[part] <= hi)).all()  # averages of own group only
    with pytest.raises(InvalidParameterError, match="fewer than k"):
        k_same_select(faces, 3, np.array([0] * 14 + [1] * 2))


def test_bad_input_raises_clear_errors():
    faces = _faces(n=5)
    with pytest.raises(InvalidParameterError, match="larger than the set"):
        k_same_pixel(faces, 6)
    with pytest.raises(InvalidParameterError, match=">= 2"):
        k_same_pixel(faces, 1)
    with pytest.raises(InvalidParameterError, match="single identity"):
        k_same_pixel(faces, 2, identities=np.zeros(5))
    with pytest.raises(InvalidParameterError, match="person-specific"):
        k_same_eigen(faces, 2, identities=np.array([0, 1, 2, 3, 3]))
    with pytest.raises(InvalidParameterError, match="distinct identities"):
        k_same_pixel(faces, 3, identities=np.array([0, 1, 0, 1, 0]))
    with pytest.raises(InvalidParameterError, match="gallery"):
        k_same_with_gallery(faces[0], faces[1:], k=6)
    with pytest.raises(InvalidParameterError):
        create_method("ksame", k=1)


def test_gallery_folder_errors(tmp_path):
    with pytest.raises(InvalidParameterError, match="not a folder"):
        fit_gallery(str(tmp_path / "missing"), 128)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidParameterError, match="different people"):
        fit_gallery(str(tmp_path / "empty"), 128)


def test_one_identity_gallery_is_rejected(tmp_path, astronaut):
    from PIL import Image
    folder = tmp_path / "one_person"
    folder.mkdir()
    Image.fromarray(astronaut).save(folder / "a.png")
    with pytest.raises(InvalidParameterError, match="one identity"):
        fit_gallery(str(folder), 128)


def _celeba_person_specific(n_people: int):
    """Aligned crops of one test-split photo and one train-split photo for n people."""
    from facedeid.alignment import FaceAligner
    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.io.datasets import read_celeba_id200_index
    from facedeid.io.images import read_image

    root = shared_path("celeba-id200")
    first_test, first_train = {}, {}
    for name, identity, is_train in read_celeba_id200_index(root):
        (first_train if is_train else first_test).setdefault(identity, name)
    people = sorted(first_test)[:n_people]
    locator, aligner = FaceLocator("centerface"), FaceAligner(128)

    def align(name):
        image = read_image(root / "img_align_celeba" / name).rgb
        return aligner.align(image, main_face(locator.locate(image)))

    test_crops = [align(first_test[p]) for p in people]
    train_crops = [align(first_train[p]) for p in people]
    return test_crops, train_crops


@pytest.fixture(scope="module")
def celeba_faces():
    return _celeba_person_specific(40)


def _dlib_embed(recognizer, images, box):
    return recognizer.embed(list(images), [box] * len(images))


@pytest.mark.shared_data
def test_rank1_against_original_gallery_is_at_most_one_over_k(celeba_faces):
    from facedeid.evaluation.recognizers import create_recognizer

    test_crops, train_crops = celeba_faces
    originals = np.stack([c.pixels for c in test_crops])
    box = np.mean([c.box for c in test_crops], axis=0)  # one box: identical outputs embed alike
    recognizer = create_recognizer("dlib")
    gallery = _dlib_embed(recognizer, originals, box)

    def rank1(probes):
        distances = np.linalg.norm(probes[:, None] - gallery[None], axis=2)
        return float(np.mean(np.argmin(distances, axis=1) == np.arange(len(probes))))

    # The attacker is strong: another photo of the same person is recognized most of the time.
    linking = rank1(_dlib_embed(recognizer, np.stack([c.pixels for c in train_crops]), box))
    assert linking >= 0.75, linking

    for k, operator in [(2, k_same_pixel), (4, k_same_pixel), (4, k_same_eigen)]:
        output = operator(originals, k, identities=np.arange(len(originals)))
        unique, inverse = np.unique(output.reshape(len(output), -1), axis=0, return_inverse=True)
        embeddings = _dlib_embed(recognizer, unique.reshape((-1, *originals.shape[1:])), box)
        achieved = rank1(embeddings[inverse.ravel()])
        assert achieved <= 1.0 / k + 1e-9, (operator.__name__, k, achieved)


@pytest.mark.shared_data
def test_per_image_method_with_a_folder_gallery(tmp_path, celeba_faces):
    from PIL import Image
    _, train_crops = celeba_faces
    for i, crop in enumerate(train_crops[:12]):
        Image.fromarray(crop.pixels).save(tmp_path / f"person{i:02d}.png")
    method = create_method("ksame", k=5, gallery=str(tmp_path))
    probe = celeba_faces[0][20]
    out = method.apply(probe, FaceContext())
    gallery = fit_gallery(str(tmp_path), 128)
    assert out.shape == probe.pixels.shape
    np.testing.assert_array_equal(out, k_same_with_gallery(probe.pixels, gallery, 5))
    with pytest.raises(InvalidParameterError, match="larger than the gallery"):
        create_method("ksame", k=30, gallery=str(tmp_path)).apply(probe, FaceContext())
