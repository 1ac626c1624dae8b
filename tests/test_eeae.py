"""EEAE (seed 004): networks, checkpoints, the registered method and its trainer."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from facedeid.errors import InvalidParameterError, MissingWeightsError
from facedeid.methods import create_method
from facedeid.methods.eeae import CHECKPOINT_DIR
from facedeid.models.eeae import (EEAECheckpointError, EEAEConfig, ExternalAutoEncoder,
                                  FeatureSelectionNetwork, InternalAutoEncoder,
                                  PrivacyRemovalNetwork, attribute_names, load_eeae,
                                  save_eeae, save_external)
from facedeid.pipeline import Anonymizer

from .conftest import shared_path

TINY = EEAEConfig(image_size=16, latent_channels=8, width=8, fc_width=4)
needs_shipped_models = pytest.mark.skipif(
    not (CHECKPOINT_DIR / "gsb.pt").is_file() or not (CHECKPOINT_DIR / "external.pt").is_file(),
    reason="shipped EEAE checkpoints missing")


def test_attribute_sets_parse_and_bad_letters_are_refused():
    assert attribute_names("GSB") == ["Male", "Smiling", "Big_Nose"]
    for bad in ("", "gx", "gg"):
        with pytest.raises(ValueError):
            attribute_names(bad)


def test_internal_output_and_fsn_feature_map_have_the_external_representations_shape():
    """Eq. 7 compares y with d and decodes y: all three must share r's shape."""
    faces = torch.rand(2, 3, 16, 16)
    external, internal = ExternalAutoEncoder(TINY), InternalAutoEncoder(TINY)
    fsn = FeatureSelectionNetwork(["Male", "Smiling"], TINY)
    representation = external.encode(faces)
    assert representation.shape == internal(representation).shape == fsn.features(faces).shape
    assert fsn(faces).shape == (2, 2, 2)
    assert PrivacyRemovalNetwork(external, internal)(faces).shape == faces.shape


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("eeae")
    external = save_external(folder / "external.pt", ExternalAutoEncoder(TINY).eval(), {})
    fsn = FeatureSelectionNetwork(["Male", "Smiling"], TINY).eval()
    with_sprn = save_eeae(folder / "gs.pt", "gs", fsn, InternalAutoEncoder(TINY).eval(),
                          ExternalAutoEncoder(TINY).eval(), {"trained_with": ["faceres"]})
    without_sprn = save_eeae(folder / "gs_prn_only.pt", "gs", fsn,
                             InternalAutoEncoder(TINY).eval(), None, {})
    return {"external": str(external), "gs": str(with_sprn), "gs_prn_only": str(without_sprn)}


def test_checkpoint_round_trip_keeps_the_networks_within_fp16(tiny_checkpoints):
    networks, payload = load_eeae(tiny_checkpoints["gs"])
    assert payload["attribute_names"] == ["Male", "Smiling"] and networks["sprn"] is not None
    networks_again, _ = load_eeae(tiny_checkpoints["gs"])
    faces = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(networks["fsn"](faces), networks_again["fsn"](faces))


def test_missing_and_foreign_checkpoints_name_the_file_and_the_command(tmp_path,
                                                                      tiny_checkpoints):
    with pytest.raises(EEAECheckpointError, match="facedeid train eeae"):
        load_eeae(tmp_path / "absent.pt")
    with pytest.raises(EEAECheckpointError, match="not a trained EEAE attribute set"):
        load_eeae(tiny_checkpoints["external"])


def test_method_replaces_the_face_deterministically_in_both_variants(tiny_checkpoints, astronaut):
    outputs = {}
    for variant in ("prn", "sprn"):
        method = create_method("eeae", attributes="gs", variant=variant,
                               checkpoint=tiny_checkpoints["gs"],
                               external=tiny_checkpoints["external"])
        assert method.trained_with == ("faceres",)
        first = Anonymizer(method).anonymize(astronaut)
        second = Anonymizer(method).anonymize(astronaut)
        assert np.array_equal(first.image, second.image)  # one output per face: video-stable
        x0, y0, x1, y1 = (int(v) for v in first.faces[0].box)
        assert np.abs(first.image[y0:y1, x0:x1].astype(int)
                      - astronaut[y0:y1, x0:x1]).mean() > 5
        outputs[variant] = first.image
    assert not np.array_equal(outputs["prn"], outputs["sprn"])


def test_wrong_set_and_missing_sprn_are_refused_readably(tiny_checkpoints):
    with pytest.raises(MissingWeightsError, match="holds the attribute set 'gs', not 'gsb'"):
        create_method("eeae", attributes="gsb", checkpoint=tiny_checkpoints["gs"],
                      external=tiny_checkpoints["external"])
    with pytest.raises(MissingWeightsError, match="--sprn-minutes"):
        create_method("eeae", attributes="gs", variant="sprn",
                      checkpoint=tiny_checkpoints["gs_prn_only"],
                      external=tiny_checkpoints["external"])
    with pytest.raises(InvalidParameterError):
        create_method("eeae", attributes="gx")


def test_trainer_refuses_bad_sets_and_overwriting_its_external_autoencoder(tmp_path):
    external = tmp_path / "external.pt"
    external.write_bytes(b"x")
    base = [sys.executable, "-m", "facedeid", "train", "eeae"]
    run = subprocess.run(base + ["--attributes", "gs", "--external", str(external),
                                 "--out", str(external)], capture_output=True, text=True)
    assert run.returncode == 2 and "this run reads" in run.stderr
    assert external.read_bytes() == b"x"
    run = subprocess.run(base + ["--attributes", "gq", "--external", str(external),
                                 "--out", str(tmp_path / "o.pt")], capture_output=True, text=True)
    assert run.returncode == 2 and "--attributes" in run.stderr


@pytest.mark.slow
def test_trainer_runs_every_stage_resumes_and_the_method_loads_its_output(tmp_path, astronaut):
    """Two steps per stage on 24 real faces, then --resume adds two more to each stage."""
    shared_path("celeba-first10k")
    out, external = tmp_path / "g.pt", tmp_path / "external.pt"
    common = [sys.executable, "-m", "facedeid", "train", "eeae", "--attributes", "g",
              "--external", str(external), "--out", str(out), "--cache", str(tmp_path / "crops"),
              "--limit", "24", "--threads", "1", "--log-every", "1", "--batch-size", "2",
              "--sprn-minutes", "5"]
    run = subprocess.run(common + ["--max-steps", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert external.is_file()
    networks, payload = load_eeae(out)
    assert payload["metrics"]["steps"] == {"external": 2, "fsn": 2, "prn": 2, "sprn": 2}
    assert "facedeid train eeae --attributes g" in payload["command"]
    # the work file holds every stage as done: --resume with a higher cap trains nothing new
    # for the finished stages and keeps the shared external autoencoder as it is
    before = external.read_bytes()
    run = subprocess.run(common + ["--max-steps", "4", "--resume"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert external.read_bytes() == before
    method = create_method("eeae", attributes="g", checkpoint=str(out), external=str(external))
    assert Anonymizer(method).anonymize(astronaut).faces


def _held_out_crops(count: int) -> np.ndarray:
    """Aligned 64-px crops of the first photos of the 40 identity-disjoint test people."""
    from facedeid.alignment import FaceAligner
    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.io.datasets import first_photo_of_each_held_out_person
    from facedeid.io.images import read_image

    locator, aligner = FaceLocator(), FaceAligner(64)
    crops = []
    for path in first_photo_of_each_held_out_person(shared_path("celeba-id200"), count):
        image = read_image(path).rgb
        crops.append(aligner.align(image, main_face(locator.locate(image))).pixels)
    return np.stack(crops)


@needs_shipped_models
def test_shipped_gsb_model_unlinks_people_no_model_saw(one_torch_thread):
    """On 20 unseen people, an independent recognizer (the surrogate) matches almost no
    de-identified face to its own original, while it matches the originals themselves."""
    from facedeid.models.surrogate_recognizer import load_surrogate_recognizer

    crops = _held_out_crops(20)
    private = create_method("eeae", attributes="gsb").network.anonymize(crops)
    recognizer = load_surrogate_recognizer()
    gallery = recognizer.embed(crops)
    rank1_private = float(np.mean((recognizer.embed(private) @ gallery.T).argmax(1)
                                  == np.arange(len(crops))))
    rank1_flipped = float(np.mean((recognizer.embed(np.ascontiguousarray(crops[:, :, ::-1])) @ gallery.T).argmax(1)
                                  == np.arange(len(crops))))
    assert rank1_flipped >= 0.8 and rank1_private <= 0.15, (rank1_flipped, rank1_private)
