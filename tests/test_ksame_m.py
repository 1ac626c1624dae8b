"""k-Same-M: k-Same on appearance-model (shape + texture) coefficients of real faces."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facedeid.alignment import FaceAligner, FaceCrop
from facedeid.errors import InvalidParameterError
from facedeid.methods import FaceContext, create_method
from facedeid.methods.ksame import k_same_with_gallery, nearest_in_gallery
from facedeid.methods.ksame_m import AppearanceModel, fit_gallery_model, fit_landmarks, k_same_m
from facedeid.pipeline import Anonymizer

from .conftest import shared_path

SIZE = 64


def _aligned_crop(pixels: np.ndarray) -> FaceCrop:
    """A FaceCrop around bare aligned pixels (what the pipeline hands an aligned method)."""
    aligner = FaceAligner(SIZE)
    return FaceCrop(pixels=pixels, landmarks=aligner.template.copy(),
                    box=np.array([0, 0, SIZE, SIZE], np.float32), mask=aligner.mask,
                    to_image=np.array([[1, 0, 0], [0, 1, 0]], np.float32))


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    """24 aligned 64-px crops of test people and a folder with one photo of 12 train people
    (celeba-id200's identity-disjoint split: the gallery never holds a probe's person)."""
    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.io.datasets import DISJOINT_SPLIT_FILE, read_celeba_id200_index
    from facedeid.io.images import read_image

    root = shared_path("celeba-id200")
    first_test, first_train = {}, {}
    for name, identity, is_train in read_celeba_id200_index(root, DISJOINT_SPLIT_FILE):
        (first_train if is_train else first_test).setdefault(identity, name)
    locator, aligner = FaceLocator("centerface"), FaceAligner(SIZE)
    crops = []
    for person in sorted(first_test)[:24]:
        image = read_image(root / "img_align_celeba" / first_test[person]).rgb
        crops.append(aligner.align(image, main_face(locator.locate(image))).pixels)
    gallery = tmp_path_factory.mktemp("ksame_m_gallery")
    for index, person in enumerate(sorted(first_train)[:12]):
        Image.open(root / "img_align_celeba" / first_train[person]).save(
            gallery / f"person{index:02d}.png")
    return np.stack(crops), str(gallery)


@pytest.mark.shared_data
def test_landmarks_fit_most_real_frontal_faces(celeba):
    faces, _ = celeba
    points, fitted = fit_landmarks(faces)
    assert fitted.mean() >= 0.9, fitted.mean()
    assert points.shape == (len(faces), 68, 2)
    assert np.isfinite(points[fitted]).all() and np.isnan(points[~fitted]).all()
    inside = (points[fitted] >= 0) & (points[fitted] < SIZE)
    assert inside.mean() > 0.95  # the face fills the aligned crop, the jaw may touch its edge


@pytest.mark.shared_data
def test_dataset_level_outputs_are_shared_by_each_cluster_and_change_every_face(celeba):
    faces, _ = celeba
    faces = faces[:20]
    k = 3
    outputs, fell_back = k_same_m(faces, k)
    assert outputs.shape == faces.shape and outputs.dtype == np.uint8
    assert not fell_back.any()
    difference = np.abs(outputs.astype(int) - faces).mean(axis=(1, 2, 3))
    assert difference.min() > 5, difference
    _, counts = np.unique(outputs.reshape(len(outputs), -1), axis=0, return_counts=True)
    assert counts.min() >= k and counts.max() < 2 * k  # Newton's clusters of k .. 2k-1
    assert len(counts) == 20 // k


@pytest.mark.shared_data
def test_rendered_average_of_two_faces_lies_between_them(celeba):
    faces, _ = celeba
    model = AppearanceModel.fit(faces[:14])
    codes, fitted = model.encode(faces[14:])
    codes = codes[fitted]
    assert len(codes) >= 6
    rendered, _ = model.render(np.concatenate([codes, codes[:2].mean(axis=0, keepdims=True)]))
    rendered = rendered.astype(float)
    average = rendered[-1]
    distance = [np.abs(average - face).mean() for face in rendered[:-1]]
    to_members, to_others = max(distance[:2]), min(distance[2:])
    assert to_members < to_others, (distance[:2], distance[2:])
    # the averaged shape is the mean of the two shapes: the model is linear in its codes
    n_shape = model.shape_pca.basis.shape[0]
    shapes = codes[:2, :n_shape] / model.shape_weight @ model.shape_pca.basis
    mean_shape = codes[:2, :n_shape].mean(axis=0) / model.shape_weight @ model.shape_pca.basis
    np.testing.assert_allclose(mean_shape, shapes.mean(axis=0), atol=1e-9)


def test_blank_and_noise_crops_are_not_fitted():
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    blank = np.full((SIZE, SIZE, 3), 128, np.uint8)
    points, fitted = fit_landmarks(np.stack([noise, blank]))
    assert not fitted.any() and np.isnan(points).all()


@pytest.mark.shared_data
def test_method_averages_with_gallery_and_never_keeps_original_pixels(celeba):
    faces, gallery = celeba
    method = create_method("ksame_m", k=5, gallery=gallery)
    face = faces[0]
    context = FaceContext()
    output = method.apply(_aligned_crop(face), context)
    assert context.notes == {}
    model = fit_gallery_model(gallery, SIZE)
    code, _ = model.encode(face[None])
    nearest = nearest_in_gallery(model.gallery_codes, code[0], 4)
    _, drawn = model.render(np.concatenate([code, model.gallery_codes[nearest]]).mean(
        axis=0, keepdims=True))
    members = np.concatenate([face[None], model.gallery_faces[nearest]]).astype(float)
    surround = np.clip(np.rint(members.mean(axis=0)), 0, 255)
    outside = ~drawn[0]
    assert outside.mean() > 0.4  # forehead, hair and background are a real share of the crop
    np.testing.assert_array_equal(output[outside], surround[outside])
    assert np.abs(output[drawn[0]].astype(int) - face[drawn[0]]).mean() > 5


@pytest.mark.shared_data
def test_unfittable_crop_falls_back_to_pixel_k_same_and_says_so(celeba):
    _, gallery = celeba
    method = create_method("ksame_m", k=5, gallery=gallery)
    noise = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    context = FaceContext()
    output = method.apply(_aligned_crop(noise), context)
    assert context.notes["fallback"] == "ksame:variant=pixel"
    assert "landmarks" in context.notes["reason"]
    model = fit_gallery_model(gallery, SIZE)
    np.testing.assert_array_equal(output, k_same_with_gallery(noise, model.gallery_faces, 5))


@pytest.mark.shared_data
def test_dataset_level_unfitted_faces_fall_back_in_clusters_of_k(celeba):
    faces, _ = celeba
    noise = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    batch = np.concatenate([faces[:10], noise])
    outputs, fell_back = k_same_m(batch, 3)
    assert fell_back[10:].all() and fell_back.sum() == 3  # one real face joins the two to make k
    _, counts = np.unique(outputs.reshape(len(outputs), -1), axis=0, return_counts=True)
    assert counts.min() >= 3


def test_k_larger_than_the_gallery_names_both_numbers(astronaut, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for index in range(3):
        Image.fromarray(astronaut).save(gallery / f"{index}.png")
    method = create_method("ksame_m", k=10, gallery=str(gallery))
    with pytest.raises(InvalidParameterError, match=r"k = 10 needs 9 .* has 3"):
        Anonymizer(method).anonymize(astronaut)


@pytest.mark.shared_data
def test_runs_through_the_pipeline_and_replaces_the_face(celeba, astronaut):
    _, gallery = celeba
    result = Anonymizer(create_method("ksame_m", k=5, gallery=gallery)).anonymize(astronaut)
    assert len(result.faces) == 1
    assert "method_notes" not in result.faces[0].extra  # the astronaut's landmarks fit
    x0, y0, x1, y1 = (int(v) for v in result.faces[0].box)
    changed = np.abs(result.image[y0:y1, x0:x1].astype(int) - astronaut[y0:y1, x0:x1])
    assert changed.mean() > 10
    # the centre of the face is the model's face, not just the box-wide pixelation under it
    pixelated = Anonymizer(create_method("pixelate", size=8)).anonymize(astronaut).image
    cx0, cy0 = x0 + (x1 - x0) // 4, y0 + (y1 - y0) // 4
    cx1, cy1 = x1 - (x1 - x0) // 4, y1 - (y1 - y0) // 4
    centre = np.abs(result.image[cy0:cy1, cx0:cx1].astype(int) - pixelated[cy0:cy1, cx0:cx1])
    assert centre.mean() > 5
    again = Anonymizer(create_method("ksame_m", k=5, gallery=gallery)).anonymize(astronaut)
    assert np.array_equal(result.image, again.image)
