"""`facedeid evaluate` end to end on small real subsets, plus its bad-input behaviour."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from facedeid.cli import main
from facedeid.evaluation.runner import MethodSpec

from .conftest import shared_path


def test_method_spec_parsing():
    spec = MethodSpec.parse("blur:kernel_size=31,sigma=4")
    assert spec.method == "blur" and dict(spec.params) == {"kernel_size": "31", "sigma": "4"}
    assert spec.title == "blur:kernel_size=31,sigma=4"
    assert MethodSpec.parse("laplace:lam=1,label=paper").title == "paper"
    assert MethodSpec.parse("mosaic").params == ()


def test_evaluate_compare_on_celeba(tmp_path):
    shared_path("celeba-id200")
    out = tmp_path / "out"
    code = main(["evaluate", "--compare", "mosaic", "blur:kernel_size=31", "--dataset", "celeba-id200",
                 "--split", "test", "--limit", "12", "--gallery-per-identity", "2",
                 "--services", "none", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                 "-q", "--samples", "3"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["methods"]] == ["mosaic", "blur:kernel_size=31"]
    usable = results["dataset"]["usable"]
    assert usable + results["dataset"]["excluded_no_face"] == 12 and usable >= 10
    base = results["baseline"]["privacy"]["dlib"]
    assert base["rank1_own_gallery"] == 1.0 and base["sdr"] == 0.0
    assert results["linking_gallery"]["size"] > 0 and base["rank1_linking"] >= 0.7
    mosaic = results["methods"][0]["privacy"]["dlib"]
    assert mosaic["sdr"] > 0.8 and mosaic["rank1_linking"] < base["rank1_linking"]
    assert 0 < results["methods"][0]["quality"]["face_ssim"] < results["methods"][0]["quality"]["ssim"] < 1
    report = (out / "report.md").read_text()
    assert "| mosaic |" in report and "samples.png" in report
    assert (out / "samples.png").stat().st_size > 0 and (out / "privacy_utility.png").exists()
    # the second run reads the originals' embeddings from the cache
    again = tmp_path / "again"
    assert main(["evaluate", "--method", "mosaic", "--dataset", "celeba-id200", "--limit", "12",
                 "--gallery-per-identity", "2", "--services", "none",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(again), "-q"]) == 0
    cached = json.loads((again / "results.json").read_text())
    assert cached["cache"]["misses"] == 0 and cached["cache"]["hits"] >= usable
    assert cached["methods"][0]["privacy"]["dlib"]["sdr"] == mosaic["sdr"]


def test_failures_and_faceless_images_are_counted(tmp_path, astronaut, failing_method):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(4):  # the astronaut, shifted so the files differ
        Image.fromarray(np.roll(astronaut, 7 * k, axis=1)).save(folder / f"face{k}.png")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / "blank.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["evaluate", "--method", failing_method, "--dataset", str(folder),  # split: all
                 "--services", "none", "--no-cache", "--out", str(out), "-q"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    data = results["dataset"]
    assert (data["records"], data["usable"], data["excluded_no_face"]) == (6, 4, 1)
    assert len(data["unreadable"]) == 1 and "broken.png" in data["unreadable"][0]["file"]
    row = results["methods"][0]
    # the failed faces stay in the denominator, counted as not protected
    assert row["failures"] == 2 and row["outputs"] == 2 and row["faces"] == 4
    assert row["privacy"]["dlib"]["unprotected_failures"] == 2
    assert row["privacy"]["dlib"]["sdr"] <= 0.5
    assert "deliberate failure" in row["failure_details"][0]["error"]
    assert results["linking_gallery"]["size"] == 0  # a plain folder has no identities
    assert "## Failures" in (out / "report.md").read_text()


def test_bad_dataset_gives_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    celeba = tmp_path / "celeba"
    (celeba / "img_align_celeba").mkdir(parents=True)
    assert main(["evaluate", "--dataset", str(celeba), "--out", str(tmp_path)]) == 2
    assert "list_attr_celeba.txt is missing" in capsys.readouterr().err
    assert main(["evaluate", "--method", "no-such-method", "--dataset", str(celeba),
                 "--out", str(tmp_path)]) == 2


def test_services_run_when_available(tmp_path):
    """Expression and detection services on a few faces (skips until the evaluators exist)."""
    shared_path("celeba-first10k")
    pytest.importorskip("facedeid.evaluation.services.expression")
    out = tmp_path / "out"
    assert main(["evaluate", "--compare", "blindfold", "mosaic", "--dataset", "celeba-first10k",
                 "--split", "all", "--limit", "10", "--services", "expression,detection",
                 "--gallery-per-identity", "1", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out), "-q"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["service_errors"] == {}
    for row in results["methods"]:
        loss = row["services"]["expression"]["service_loss_rate"]
        assert 0.0 <= loss <= 1.0
        assert 0.0 <= row["services"]["detection"]["detection_rate"] <= 1.0


def test_probes_take_the_main_face_of_each_original(tmp_path):
    """The evaluator picks "the face" by the project's one rule (main_face: largest box), not by
    detector score: a small confident face beside a large one must not become the probe."""
    from facedeid.detection import Face
    from facedeid.evaluation.runner import EvalConfig, Evaluator
    from facedeid.io.datasets import load_dataset

    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "one.png")
    large = Face(box=[4, 4, 60, 60], score=0.6)
    small = Face(box=[0, 0, 10, 10], score=0.99)

    class TwoFaces:  # stands in for the run's FaceLocator
        def locate(self, image):
            return [small, large]  # best score first, as detectors order them

    evaluator = Evaluator.__new__(Evaluator)  # no models: only the probe selection is tested
    evaluator.config = EvalConfig(progress=False)
    evaluator.locator = TwoFaces()
    probes, info = evaluator.prepare_probes(load_dataset(tmp_path, split="all"))
    assert info["usable"] == 1 and probes[0].face is large
