"""k-Same-Net: k-Same on the face generator's latent codes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facedeid.errors import InvalidParameterError
from facedeid.methods import create_method
from facedeid.methods.ksame_net import encode_faces, k_same_net
from facedeid.models.face_generator import FaceEncoder, FaceGenerator, GeneratorConfig, \
    save_generator
from facedeid.pipeline import Anonymizer

TINY = GeneratorConfig(image_size=16, spatial_channels=4, style_dim=8, widths=(16, 8))


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    torch.manual_seed(0)
    encoder, generator = FaceEncoder(TINY).eval(), FaceGenerator(TINY).eval()
    path = save_generator(tmp_path_factory.mktemp("gen") / "gen.pt", encoder, generator)
    return path


def test_dataset_level_outputs_are_shared_by_at_least_k_faces(tiny_generator, one_torch_thread):
    from facedeid.models.face_generator import load_generator

    encoder, generator, _ = load_generator(tiny_generator)
    faces = np.random.default_rng(0).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
    outputs = k_same_net(faces, 3, encoder, generator)
    assert outputs.shape == faces.shape
    _, counts = np.unique(outputs.reshape(len(outputs), -1), axis=0, return_counts=True)
    assert counts.min() >= 3 and len(counts) == 11 // 3  # 3 clusters: 3, 3 and the last 5
    assert encode_faces(encoder, faces).shape[0] == 11


def test_k_larger_than_the_gallery_names_both_numbers(tiny_generator, astronaut, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for index in range(3):
        Image.fromarray(astronaut).save(gallery / f"{index}.png")
    method = create_method("ksame_net", k=10, gallery=str(gallery), generator=str(tiny_generator))
    with pytest.raises(InvalidParameterError, match=r"k = 10 needs 9 .* has 3"):
        Anonymizer(method).anonymize(astronaut)


def test_per_image_face_is_replaced_and_is_deterministic(tiny_generator, astronaut, tmp_path,
                                                         one_torch_thread):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for index, angle in enumerate((0, 4, 8, 12, 16)):  # five slightly different photos
        Image.fromarray(astronaut).rotate(angle).save(gallery / f"{index}.png")
    method = create_method("ksame_net", k=5, gallery=str(gallery), generator=str(tiny_generator))
    first = Anonymizer(method).anonymize(astronaut)
    second = Anonymizer(method).anonymize(astronaut)
    assert np.array_equal(first.image, second.image)
    x0, y0, x1, y1 = (int(v) for v in first.faces[0].box)
    assert np.abs(first.image[y0:y1, x0:x1].astype(int) - astronaut[y0:y1, x0:x1]).mean() > 5
