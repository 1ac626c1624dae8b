"""Face generator, Private-Encoder networks, the private_encoder method and their trainers."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from facedeid.alignment import FaceAligner
from facedeid.detection.base import Face
from facedeid.errors import InvalidParameterError, MissingWeightsError
from facedeid.methods import create_method
from facedeid.methods.private_encoder import (DEFAULT_CHECKPOINT, MIN_FACE_PIXELS, face_problem,
                                              match_colours)
from facedeid.models.face_generator import (FaceEncoder, FaceGenerator, FaceLatent,
                                            GeneratorConfig, load_generator, save_generator)
from facedeid.models.private_encoder import (PrivateEncoder, PrivateEncoderCheckpointError,
                                             PrivateFaceModel, load_private_face_model,
                                             save_private_encoder)
from facedeid.pipeline import Anonymizer

from .conftest import SHARED_DATA, shared_path

TINY = GeneratorConfig(image_size=16, spatial_channels=4, style_dim=8, widths=(16, 8))
needs_shipped_model = pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(),
                                         reason="the shipped private_encoder.pt is absent")


def _tiny_model(seed: int = 0) -> PrivateFaceModel:
    torch.manual_seed(seed)
    return PrivateFaceModel(PrivateEncoder(TINY), FaceGenerator(TINY)).eval()


def test_untrained_privacy_networks_start_from_the_generators_reconstruction(one_torch_thread):
    model = _tiny_model()
    faces = torch.rand(3, 3, 16, 16)
    reconstruction = model.generator(model.private_encoder.encoder(faces))
    for beta in (0.0, 0.5, 1.0):  # zero-initialised PENs: the knob has no effect yet
        assert torch.allclose(model(faces, beta), reconstruction, atol=1e-6)
    # once a PEN's last layer is non-zero, beta changes the code
    torch.nn.init.normal_(model.private_encoder.style_pens[0].net[-1].weight)
    assert not torch.allclose(model(faces, 0.0), model(faces, 1.0))


def test_latent_round_trip_and_sampling_prior(one_torch_thread):
    torch.manual_seed(0)
    encoder, generator = FaceEncoder(TINY), FaceGenerator(TINY, prior_rank=4)
    latent = encoder(torch.rand(5, 3, 16, 16))
    flat = latent.flat()
    again = FaceLatent.from_flat(flat, TINY)
    assert torch.equal(again.spatial, latent.spatial) and torch.equal(again.styles, latent.styles)
    with pytest.raises(RuntimeError, match="not fitted"):
        generator.sample(2)
    generator.fit_latent_prior(flat.detach())
    samples = generator.sample(3, torch.Generator().manual_seed(1))
    assert samples.shape == (3, 3, 16, 16) and 0 <= float(samples.min()) <= float(samples.max()) <= 1


def test_checkpoints_round_trip_in_fp16(tmp_path, one_torch_thread):
    model = _tiny_model()
    torch.nn.init.normal_(model.private_encoder.style_pens[1].net[-1].weight, std=0.1)
    path = save_private_encoder(tmp_path / "pe.pt", model, {"trained_with": ["faceres"]})
    loaded, payload = load_private_face_model(path)
    faces = torch.rand(2, 3, 16, 16)
    assert payload["trained_with"] == ["faceres"]
    assert torch.allclose(loaded(faces, 0.2), model(faces, 0.2), atol=2e-2)
    gen_path = save_generator(tmp_path / "gen.pt", model.private_encoder.encoder, model.generator)
    encoder, generator, _ = load_generator(gen_path)
    assert not any(p.requires_grad for p in generator.parameters())


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "foreign"])
def test_missing_or_corrupt_checkpoint_names_file_and_command(tmp_path, content):
    path = tmp_path / "pe.pt"
    if content == "foreign":
        torch.save({"format": "something-else"}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(PrivateEncoderCheckpointError) as caught:
        load_private_face_model(path)
    assert str(path) in str(caught.value)
    assert "facedeid train private-encoder" in str(caught.value)
    with pytest.raises(MissingWeightsError):  # the method surfaces the same readable error
        create_method("private_encoder", checkpoint=str(path))


def _aligned_crop(box_width: float, shift_nose: float = 0.0):
    """An aligned 64-px crop of a synthetic face whose image box is ``box_width`` wide."""
    aligner = FaceAligner(64)
    scale = box_width / 64.0
    landmarks = aligner.template * scale + 100.0
    landmarks[2, 0] += shift_nose * box_width
    image = np.full((400, 400, 3), 128, np.uint8)
    face = Face(box=[100, 100, 100 + box_width, 100 + box_width], landmarks=landmarks)
    return aligner.align(image, face), aligner.template


def test_tiny_and_profile_faces_are_refused_by_the_model_check():
    crop, template = _aligned_crop(120)
    assert face_problem(crop, template) is None
    aligner = FaceAligner(64)  # a 60-px face tilted by 40 degrees is not tiny
    angle = np.deg2rad(40)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    tilted = (aligner.template * 60 / 64 - 30) @ rotation.T + 200
    face = Face(box=[170, 170, 230, 230], landmarks=tilted.astype(np.float32))
    assert face_problem(aligner.align(np.zeros((400, 400, 3), np.uint8), face),
                        aligner.template) is None
    crop, template = _aligned_crop(MIN_FACE_PIXELS - 4)
    assert "tiny face" in face_problem(crop, template)
    crop, template = _aligned_crop(120, shift_nose=0.175)  # nose 0.7 eye distances aside
    assert "profile face" in face_problem(crop, template)
    crop, template = _aligned_crop(120)
    crop.landmarks[3:] += 20  # mouth corners nowhere near the template: a bad fit
    assert "unaligned face" in face_problem(crop, template)


def test_colour_matching_moves_the_face_to_the_inputs_tone():
    rng = np.random.default_rng(0)
    original = rng.integers(150, 200, (64, 64, 3), dtype=np.uint8)
    generated = rng.integers(40, 90, (64, 64, 3), dtype=np.uint8)
    mask = FaceAligner(64).mask
    matched = match_colours(generated, original, mask)
    inside = mask > 0.5
    before = abs(generated[inside].mean() - original[inside].mean())
    after = abs(matched[inside].astype(float).mean() - original[inside].mean())
    assert before > 60 and after < 6


def test_beta_above_the_safe_range_is_refused_unless_allowed(tmp_path):
    path = save_private_encoder(tmp_path / "pe.pt", _tiny_model())
    with pytest.raises(InvalidParameterError, match="beta"):
        create_method("private_encoder", checkpoint=str(path), beta=0.9)
    method = create_method("private_encoder", checkpoint=str(path), beta=0.9, allow_weak=True)
    assert method.weak_reasons
    with pytest.raises(InvalidParameterError):
        create_method("private_encoder", checkpoint=str(path), beta=1.5)


def test_tiny_face_falls_back_to_pixelate_and_is_counted(tmp_path, astronaut, astronaut_face):
    path = save_private_encoder(tmp_path / "pe.pt", _tiny_model())
    # a 16-px model: every aligned crop is 16 px, the face box is what is judged tiny
    anonymizer = Anonymizer("private_encoder", {"checkpoint": str(path)})
    small = Face(box=[20, 20, 40, 40], landmarks=FaceAligner(16).template + 20)
    big = Face(astronaut_face.box, astronaut_face.score, astronaut_face.landmarks)
    result = anonymizer.anonymize(astronaut, faces=[small, big])
    notes = [face.to_dict().get("method_notes") for face in result.faces]
    assert notes[0]["fallback"] == "pixelate" and "tiny face" in notes[0]["reason"]
    assert notes[1] is None
    assert np.abs(result.image[22:38, 22:38].astype(int) - astronaut[22:38, 22:38]).mean() > 1


@needs_shipped_model
def test_shipped_model_is_deterministic_and_beta_moves_the_identity(one_torch_thread):
    """On faces of the 40 people no model saw: faceres similarity to the input grows with beta."""
    from facedeid.models.faceres import load_faceres

    held = sorted(shared_path("celeba-id200", "img_align_celeba").glob("*.jpg"))
    if not held:
        pytest.skip("no celeba-id200 images")
    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.io.datasets import held_out_identities, read_identities
    from facedeid.io.images import read_image

    test_people = held_out_identities(SHARED_DATA / "celeba-id200")
    people = read_identities(SHARED_DATA / "celeba-id200")
    files = [p for p in held if people.get(p.name) in test_people][:6]
    model, _ = load_private_face_model(DEFAULT_CHECKPOINT)
    size = model.generator.config.image_size
    locator, aligner = FaceLocator(), FaceAligner(size)
    crops = []
    for path in files:
        image = read_image(path).rgb
        crops.append(aligner.align(image, main_face(locator.locate(image))).pixels)
    crops = np.stack(crops)
    first, second = model.anonymize(crops, 0.2), model.anonymize(crops, 0.2)
    assert np.array_equal(first, second)  # a video track keeps one replacement identity
    faceres = load_faceres()
    as_tensor = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    with torch.no_grad():
        reference = faceres(as_tensor(crops)).descriptor
        similarity = {beta: float((faceres(as_tensor(model.anonymize(crops, beta))).descriptor
                                   * reference).sum(1).mean()) for beta in (0.0, 1.0)}
    assert similarity[0.0] + 0.1 < similarity[1.0], similarity


def test_trainers_refuse_to_overwrite_what_they_read(tmp_path):
    generator = tmp_path / "gen.pt"
    generator.write_bytes(b"x")
    run = subprocess.run([sys.executable, "-m", "facedeid", "train", "private-encoder",
                          "--generator", str(generator), "--out", str(generator)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "this run reads" in run.stderr
    assert generator.read_bytes() == b"x"
    run = subprocess.run([sys.executable, "-m", "facedeid", "train", "private-encoder",
                          "--generator", str(generator), "--out", str(tmp_path / "o.pt"),
                          "--beta", "1.5"], capture_output=True, text=True)
    assert run.returncode == 2 and "--beta" in run.stderr


@pytest.mark.slow
def test_generator_and_private_encoder_train_resume_and_export(tmp_path):
    """A few steps on 24 real faces: checkpoints load, resume continues the step count."""
    shared_path("celeba-first10k")
    common = ["--cache", str(tmp_path / "crops"), "--limit", "24", "--threads", "1"]
    gen, work = tmp_path / "gen.pt", tmp_path / "gen_work.pt"
    base = [sys.executable, "-m", "facedeid", "train"]
    for extra in ([], ["--resume"]):
        run = subprocess.run(base + ["generator", "--out", str(gen), "--work", str(work),
                                     "--steps", str(2 + len(extra) * 2), "--batch-size", "4",
                                     "--adv-start", "1", "--log-every", "1"] + common + extra,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
    _, generator, payload = load_generator(gen)
    assert payload["metrics"]["steps"] == 4 and bool(generator.latent_scale.any())
    assert "facedeid train generator" in payload["command"]
    pe = tmp_path / "pe.pt"
    run = subprocess.run(base + ["private-encoder", "--generator", str(gen), "--out", str(pe),
                                 "--steps", "1", "--batch-size", "2"] + common,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    model, payload = load_private_face_model(pe)
    assert payload["trained_with"] == ["faceres"] and payload["metrics"]["steps"] == 1
    assert json.loads(json.dumps(payload["metrics"]))["held_out"]
