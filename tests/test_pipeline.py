"""detect → align → de-identify → paste back, and the no-face policies."""
from __future__ import annotations

import numpy as np
import pytest

import facedeid
from facedeid.alignment import FaceAligner, paste_back
from facedeid.detection import Face
from facedeid.methods import DeidMethod, register
from facedeid.pipeline import Anonymizer


def test_aligned_landmarks_land_on_the_template(astronaut, astronaut_face):
    aligner = FaceAligner(size=128)
    crop = aligner.align(astronaut, astronaut_face)
    assert crop.pixels.shape == (128, 128, 3)
    assert np.abs(crop.landmarks - aligner.template).max() < 4


def test_paste_back_of_an_unchanged_crop_changes_almost_nothing(astronaut, astronaut_face):
    crop = FaceAligner(size=128).align(astronaut, astronaut_face)
    out = astronaut.copy()
    coverage = np.zeros(astronaut.shape[:2], np.float32)
    paste_back(out, crop, crop.pixels, coverage)
    inside = coverage > 0.99
    assert inside.sum() > 3000
    # resampling twice blurs slightly; it must not move or recolour the face
    assert np.abs(out.astype(int) - astronaut)[inside].mean() < 6


@register
class _InvertAligned(DeidMethod):
    """Test-only aligned-space method: colour inversion (easy to verify after paste-back)."""

    name = "_test_invert_aligned"
    space = "aligned"

    def apply(self, crop, context):
        return 255 - crop.pixels


def test_aligned_methods_are_pasted_back_over_the_face(astronaut, astronaut_face):
    result = Anonymizer("_test_invert_aligned").anonymize(astronaut, faces=[astronaut_face])
    inside = result.coverage > 0.99
    # inverted where fully covered: far from the original
    assert np.abs(result.image.astype(int) - astronaut)[inside].mean() > 60
    # the eyes and mouth are covered
    for x, y in astronaut_face.landmarks:
        assert result.coverage[int(y), int(x)] > 0.99
    assert np.array_equal(result.image[result.coverage == 0], astronaut[result.coverage == 0])


def test_input_array_is_never_modified(astronaut, astronaut_face):
    before = astronaut.copy()
    Anonymizer("mosaic").anonymize(astronaut, faces=[astronaut_face])
    assert np.array_equal(before, astronaut)


def test_several_faces_are_all_anonymized(astronaut):
    group = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)  # two people side by side
    result = Anonymizer("mask").anonymize(group)
    assert len(result.faces) == 2
    for face in result.faces:
        cx, cy = face.center.astype(int)
        assert (result.image[cy, cx] == 0).all()


@pytest.mark.parametrize("policy,action", [("keep", "kept"), ("skip", "skipped"),
                                           ("obfuscate", "obfuscated")])
def test_no_face_policies(policy, action, astronaut):
    landscape = astronaut[300:, 300:].copy()  # no face in this corner
    result = Anonymizer("blur", no_face=policy).anonymize(landscape)
    assert result.action == action and result.faces == [] and result.warnings
    if policy == "obfuscate":
        assert result.coverage.min() == 1.0 and not np.array_equal(result.image, landscape)
    else:
        assert np.array_equal(result.image, landscape)


def test_obfuscate_falls_back_for_aligned_methods(astronaut):
    landscape = astronaut[300:, 300:].copy()
    result = Anonymizer("_test_invert_aligned", no_face="obfuscate").anonymize(landscape)
    assert result.action == "obfuscated" and not np.array_equal(result.image, landscape)


def test_faces_without_landmarks_get_them(astronaut, astronaut_face):
    bare = Face(box=astronaut_face.box)
    result = Anonymizer("blindfold").anonymize(astronaut, faces=[bare])
    assert result.faces[0].has_full_landmarks
    assert np.abs(result.faces[0].landmarks - astronaut_face.landmarks).max() < 12


def test_python_api_accepts_arrays_and_paths(astronaut, tmp_path):
    from PIL import Image
    out = facedeid.anonymize(astronaut, method="pixelate", size=5)
    assert out.shape == astronaut.shape and not np.array_equal(out, astronaut)
    path = tmp_path / "a.png"
    Image.fromarray(astronaut).save(path)
    assert np.array_equal(facedeid.anonymize(str(path), method="pixelate", size=5), out)
    assert "mosaic" in facedeid.list_methods()
