"""QM-VAE: network, privacy-by-construction, gradients, black-box estimator, checkpoints, method."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from facedeid.errors import FaceDeidError  # noqa: E402
from facedeid.models.qmvae import (QMVAE, CheckpointError, QMVAEConfig, load_qmvae,  # noqa: E402
                                   read_checkpoint, save_checkpoint)
from facedeid.training.blackbox import (BlackBoxEvaluatorError,  # noqa: E402
                                        checked_probabilities, consistency_scores)
from facedeid.training.qmvae import (TrainConfig, estimate_score_gradient,  # noqa: E402
                                     train_qmvae)
from facedeid.training.qmvae_data import FaceStacks, ServiceViews, render_views  # noqa: E402

SMALL = dict(image_size=32, hidden=16, latent_dim=8, codebook_size=16, downsamples=2,
             res_blocks=1)


def small_model(inputs=("blindfold", "mosaic", "laplace", "cartoon")) -> QMVAE:
    torch.manual_seed(0)
    return QMVAE(QMVAEConfig(inputs=list(inputs), **SMALL))


def test_forward_shapes_and_range():
    model = small_model()
    out = model(torch.rand(3, 12, 32, 32))
    assert out.reconstruction.shape == (3, 3, 32, 32)
    assert out.codes.shape == (3, 8, 8)
    faces = out.reconstruction.detach()
    assert 0.0 <= float(faces.min()) and float(faces.max()) <= 1.0
    assert int(out.codes.max()) < 16


def test_input_count_is_configurable_and_checked():
    three = small_model(("mosaic", "laplace", "cartoon"))
    assert three(torch.rand(1, 9, 32, 32)).reconstruction.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="de-identified"):
        three(torch.rand(1, 12, 32, 32))  # a fourth image (e.g. the original) has no slot


def test_original_is_never_an_input():
    """forward() takes the de-identified stack only; its signature has no room for the original."""
    parameters = list(inspect.signature(QMVAE.forward).parameters)
    assert parameters == ["self", "stack"]
    model = small_model()
    with pytest.raises(TypeError):
        model(torch.rand(1, 12, 32, 32), torch.rand(1, 3, 32, 32))


def test_straight_through_gradient_reaches_encoder():
    model = small_model()
    out = model(torch.rand(2, 12, 32, 32))
    out.reconstruction.mean().backward()
    first_encoder_layer = model.encoder[0].weight
    assert first_encoder_layer.grad is not None and float(first_encoder_layer.grad.abs().sum()) > 0


def test_ema_codebook_moves_towards_encoder_outputs():
    model = small_model().train()
    before = model.quantizer.codebook.clone()
    for _ in range(3):
        model(torch.rand(4, 12, 32, 32))
    assert not torch.allclose(before, model.quantizer.codebook)


def test_literal_codebook_loss_moves_only_the_codebook():
    torch.manual_seed(0)
    model = QMVAE(QMVAEConfig(codebook_update="loss", **SMALL))
    out = model(torch.rand(2, 12, 32, 32))
    first_encoder_layer = model.encoder[0].weight
    out.codebook_loss.backward()
    codebook = dict(model.named_parameters())["quantizer._codebook.embed"]
    assert codebook.grad is not None and float(codebook.grad.abs().sum()) > 0
    assert first_encoder_layer.grad is None or float(first_encoder_layer.grad.abs().sum()) == 0


def test_black_box_estimator_improves_a_query_only_objective():
    """NES descent on a hidden quadratic it can only query must move towards the hidden target."""
    import cv2

    rng = np.random.default_rng(1)
    coarse = rng.uniform(0.2, 0.8, (4, 4, 3)).astype(np.float32)  # a smooth hidden target
    target = cv2.resize(coarse, (16, 16), interpolation=cv2.INTER_LINEAR)[None]
    queries = {"n": 0}

    def score(images: np.ndarray) -> np.ndarray:
        queries["n"] += len(images)
        return ((images - target) ** 2).sum(axis=(1, 2, 3))

    current = np.full((2, 16, 16, 3), 0.5, np.float32)
    before = score(current).mean()
    for _ in range(60):
        gradient = estimate_score_gradient(score, current, rng, sigma=0.05, pairs=4, grid=8)
        current = np.clip(current - 0.002 * gradient, 0, 1)
    after = score(current).mean()
    assert queries["n"] > 0
    assert after < 0.5 * before


def test_consistency_scores_reward_agreement():
    reference = np.array([[0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])
    same = consistency_scores(reference, reference, "multiclass", "ce")
    other = consistency_scores(reference, np.roll(reference, 1, axis=1), "multiclass", "ce")
    assert (same < other).all()
    assert np.allclose(consistency_scores(reference, reference, "multiclass", "kl"), 0, atol=1e-6)


class _Evaluator:
    name, kind = "toy", "multiclass"

    def __init__(self, behaviour="ok"):
        self.behaviour = behaviour

    def probabilities(self, faces):
        if self.behaviour == "raise":
            raise RuntimeError("service down")
        if self.behaviour == "shape":
            return np.ones((len(faces) + 1, 3)) / 3
        if self.behaviour == "nan":
            return np.full((len(faces), 3), np.nan)
        brightness = faces.mean(axis=(1, 2, 3))
        logits = np.stack([brightness * 4, 2 - brightness * 4, np.zeros_like(brightness)], 1)
        exp = np.exp(logits)
        return exp / exp.sum(1, keepdims=True)


@pytest.mark.parametrize("behaviour", ["raise", "shape", "nan"])
def test_malformed_black_box_gives_clear_error(behaviour):
    with pytest.raises(BlackBoxEvaluatorError, match="service evaluator"):
        checked_probabilities(_Evaluator(behaviour), np.zeros((2, 8, 8, 3), np.float32))


def _toy_stacks(count=8, size=32, inputs=4, seed=0) -> FaceStacks:
    """Random faces whose service window is the crop itself (identity grid, full weight)."""
    rng = np.random.default_rng(seed)
    originals = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    versions = np.stack([originals // 2 + rng.integers(0, 60, originals.shape, dtype=np.uint8)
                         for _ in range(inputs)], axis=1).astype(np.uint8)
    xs, ys = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    views = ServiceViews(np.tile(np.stack([xs, ys], -1), (count, 1, 1, 1)),
                         np.ones((count, size, size), np.float32), originals.copy(),
                         np.ones(count, bool))
    return FaceStacks([f"{i}.png" for i in range(count)], originals, versions,
                      np.tile(np.eye(2, 3, dtype=np.float32), (count, 1, 1)), views=views)


def test_checkpoint_round_trip_and_resume(tmp_path):
    stacks = _toy_stacks()
    model_config = QMVAEConfig(**SMALL)
    path = tmp_path / "q.pt"
    config = TrainConfig(alpha=0.5, epochs=2, batch_size=4, pairs=1, checkpoint_every=1,
                         eval_epochs=(2,))
    model, history = train_qmvae(stacks, config, model_config, test=stacks, out=path,
                                 progress=False, evaluator=_Evaluator())
    assert [h["epoch"] for h in history] == [1, 2] and "test_service_loss_rate" in history[-1]
    loaded, payload = load_qmvae(path)
    stack = torch.from_numpy(stacks.stacks()).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.allclose(loaded(stack).reconstruction, model(stack).reconstruction)
    assert payload["epoch"] == 2 and not list(tmp_path.glob(".*.tmp"))
    # Resume to 3 epochs continues from epoch 2 instead of starting over.
    config.epochs = 3
    _, resumed = train_qmvae(stacks, config, model_config, test=stacks, out=path, resume=True,
                             progress=False, evaluator=_Evaluator())
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    assert read_checkpoint(path)["epoch"] == 3
    # A different alpha cannot silently continue this run.
    config.alpha, config.epochs = 0.9, 4
    with pytest.raises(FaceDeidError, match="cannot resume"):
        train_qmvae(stacks, config, model_config, out=path, resume=True, progress=False,
                    evaluator=_Evaluator())


def test_bad_evaluator_aborts_training_without_writing(tmp_path):
    path = tmp_path / "q.pt"
    with pytest.raises(BlackBoxEvaluatorError):
        train_qmvae(_toy_stacks(), TrainConfig(epochs=1, batch_size=4, pairs=1),
                    QMVAEConfig(**SMALL), out=path, progress=False,
                    evaluator=_Evaluator("shape"))
    assert not path.exists() and not list(tmp_path.iterdir())


def test_missing_and_foreign_checkpoints_name_the_train_command(tmp_path):
    with pytest.raises(CheckpointError, match="facedeid train qmvae"):
        load_qmvae(tmp_path / "absent.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(CheckpointError, match="facedeid train qmvae"):
        load_qmvae(foreign)
    from facedeid.methods import create_method
    with pytest.raises(FaceDeidError, match="facedeid train qmvae"):
        create_method("qmvae", checkpoint=str(tmp_path / "absent.pt"))


def test_registered_method_runs_through_the_pipeline(astronaut, tmp_path):
    from facedeid.pipeline import Anonymizer

    model = QMVAE(QMVAEConfig(**{**SMALL, "image_size": 64}))
    path = save_checkpoint(tmp_path / "tiny.pt", model)
    anonymizer = Anonymizer("qmvae", {"checkpoint": str(path)}, landmarks="box", seed=0)
    assert anonymizer.method.aligned_size == 64
    result = anonymizer.anonymize(astronaut)
    assert len(result.faces) == 1 and result.image.shape == astronaut.shape
    changed = np.abs(result.image.astype(int) - astronaut).sum(axis=2) > 0
    assert changed[result.coverage > 0.99].mean() > 0.9  # the face region was replaced
    assert not changed[result.coverage == 0].any()  # nothing outside it


def test_split_input_list():
    from facedeid.cli.train import split_input_list
    assert split_input_list("blindfold,mosaic:block_size=4,laplace:lam=0.2,mu=0,cartoon") == [
        "blindfold", "mosaic:block_size=4", "laplace:lam=0.2,mu=0", "cartoon"]


def test_rendered_view_is_what_the_haar_service_crops_after_paste_back(astronaut, astronaut_face):
    """render_views (used in training) == paste_back + the expression service's own window."""
    import dataclasses

    import cv2

    from facedeid.alignment import FaceAligner, paste_back
    from facedeid.detection.haar import HaarDetector
    from facedeid.evaluation.services import create_service
    from facedeid.training.qmvae_data import service_view

    image = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    # A half-size copy: the fixture is shared by the whole session and must stay as it is.
    face = dataclasses.replace(astronaut_face, box=astronaut_face.box / 2,
                               landmarks=astronaut_face.landmarks / 2)
    crop = FaceAligner(size=64).align(image, face)
    grid, weight, background, found = service_view(image, crop, face.box, HaarDetector())
    assert found and weight.max() > 0.99 and weight.min() == 0.0  # the window shows the seam
    # A fused face the Haar cascade still finds (mirrored, blurred): the service then crops the
    # same window on the pasted image, so the two pictures must agree pixel for pixel.
    fused = cv2.GaussianBlur(np.ascontiguousarray(crop.pixels[:, ::-1]), (3, 3), 0)
    views = ServiceViews(grid[None], weight[None], background[None], np.array([found]))
    rendered = render_views(torch.from_numpy(fused).permute(2, 0, 1)[None].float() / 255, views)
    rendered = (rendered[0].permute(1, 2, 0).numpy() * 255).astype(np.float32)
    rendered_gray = rendered @ np.array([0.299, 0.587, 0.114], np.float32)
    service = create_service("expression", crop="haar")
    pasted = paste_back(image.copy(), crop, fused)
    # The service's window on the pasted image, with the original's window as the known box.
    service_gray, _ = service.face_crops([pasted], [face.box])
    difference = np.abs(rendered_gray - service_gray[0].astype(np.float32))
    assert np.median(difference) < 6 and difference.mean() < 12  # same picture, resampled
    original_gray, _ = service.face_crops([image], [face.box])
    assert np.abs(background @ np.array([0.299, 0.587, 0.114]) - original_gray[0]).mean() < 3


def test_online_surrogate_imitates_a_black_box_from_answers_only():
    from facedeid.training.service_surrogate import OnlineSurrogate

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, 16, 16, 3), dtype=np.uint8)
    images[:256] //= 3  # dark half
    answers = checked_probabilities(_Evaluator(), images.astype(np.float32) / 255)
    student = OnlineSurrogate(3, "multiclass", seed=0, learning_rate=3e-3)
    student.remember(images, answers)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    before = student.agreement(tensor, answers)
    student.warm_up(150, batch_size=64)
    assert student.queries == 512
    assert student.agreement(tensor, answers) > max(0.9, before + 0.2)
    # Its service loss has a gradient pointing the image towards the wanted decision.
    dark = tensor[:4].clone().requires_grad_(True)
    bright_label = np.tile([1.0, 0.0, 0.0], (4, 1))  # class 0 = bright for the toy service
    student.service_loss(dark, bright_label).backward()
    assert float(dark.grad.mean()) < 0  # descending the loss brightens the image


def test_surrogate_mode_trains_and_counts_its_queries(tmp_path):
    stacks = _toy_stacks(count=8, size=32)
    config = TrainConfig(alpha=0.5, epochs=2, batch_size=4, mode="surrogate",
                         surrogate_warmup_steps=5, eval_epochs=(2,))
    _, history = train_qmvae(stacks, config, QMVAEConfig(**SMALL), test=stacks,
                             out=tmp_path / "s.pt", progress=False, evaluator=_Evaluator())
    # warm-up: originals + 4 inputs, once each; then one query per fused face per epoch
    assert history[0]["surrogate_warmup_queries"] == 8 * 5
    assert history[-1]["surrogate_queries"] == 8 * 5 + 2 * 8
    assert "surrogate" in read_checkpoint(tmp_path / "s.pt")
    # Resuming loads the stored student (no second warm-up) and keeps counting the run's total:
    # the pool is answered again (8 originals + 4 x 8 inputs), then one epoch of 8 faces.
    config.epochs = 3
    _, resumed = train_qmvae(stacks, config, QMVAEConfig(**SMALL), test=stacks,
                             out=tmp_path / "s.pt", resume=True, progress=False,
                             evaluator=_Evaluator())
    assert "surrogate_warmup_loss" not in resumed[-1]
    assert resumed[-1]["surrogate_queries"] == (8 * 5 + 2 * 8) + 8 * 5 + 8


def test_service_head_learns_the_black_box_decision_from_the_codes(tmp_path, one_torch_thread):
    """The head reads only the quantized codes of the de-identified stack and must come to give
    the black box's decision on the original (here: dark vs bright faces)."""
    stacks = _toy_stacks(count=16, size=32)
    stacks.originals[:8] //= 4  # dark half: the toy service answers class 1, bright half class 0
    stacks.versions[:8] //= 4
    stacks.views.background = stacks.originals.copy()
    config = TrainConfig(alpha=0.0, epochs=60, batch_size=4, reconstruction="mse", seed=0,
                         service_head_weight=1.0, eval_epochs=())
    model, history = train_qmvae(stacks, config, QMVAEConfig(**SMALL), out=tmp_path / "h.pt",
                                 progress=False, evaluator=_Evaluator())
    assert model.config.service_classes == 3  # filled in from the evaluator's answer width
    assert history[-1]["train_head"] < history[0]["train_head"]
    loaded, _ = load_qmvae(tmp_path / "h.pt")
    stack = torch.from_numpy(stacks.stacks()).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        guess = loaded(stack).service_logits.argmax(1).numpy()
    wanted = checked_probabilities(_Evaluator(), stacks.originals / 255.0).argmax(1)
    assert set(wanted) == {0, 1} and (guess == wanted).mean() == 1.0


def test_service_head_of_the_wrong_width_is_refused():
    with pytest.raises(FaceDeidError, match="service head"):
        train_qmvae(_toy_stacks(), TrainConfig(epochs=1, batch_size=4, service_head_weight=1.0),
                    QMVAEConfig(**{**SMALL, "service_classes": 5}), progress=False,
                    evaluator=_Evaluator())


def test_pasted_view_needs_views_and_says_so():
    stacks = _toy_stacks()
    stacks.views = None
    with pytest.raises(FaceDeidError, match="service_view"):
        train_qmvae(stacks, TrainConfig(epochs=1, batch_size=4), QMVAEConfig(**SMALL),
                    progress=False, evaluator=_Evaluator())


def test_identity_term_pushes_the_surrogate_identity_away(one_torch_thread):
    """With gamma > 0 the fused faces' cosine to their originals (surrogate CosFace) drops."""
    pytest.importorskip("facedeid.models.surrogate_recognizer")
    stacks = _toy_stacks(count=8, size=32)
    config = TrainConfig(alpha=0.0, epochs=25, batch_size=8, service_view="crop", seed=0,
                         reconstruction="mse", identity_weight=5.0)
    _, history = train_qmvae(stacks, config, QMVAEConfig(**SMALL), progress=False,
                             evaluator=_Evaluator())
    cosines = [record["train_identity_cos"] for record in history]
    assert cosines[-1] < cosines[0] - 0.1, cosines


def test_train_command_skips_bad_images_and_writes_a_usable_checkpoint(astronaut, tmp_path,
                                                                       capsys):
    """The CLI on a folder with real faces, an unreadable file and a faceless image."""
    import cv2

    from facedeid.cli import main

    data = tmp_path / "faces"
    data.mkdir()
    for index, side in enumerate((256, 240, 224, 208, 200)):
        face = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(data / f"{index:02d}.png"), face[:, :, ::-1])
    (data / "05.jpg").write_bytes(b"not a JPEG at all")
    cv2.imwrite(str(data / "06.png"), np.full((128, 128, 3), 127, np.uint8))
    out = tmp_path / "q.pt"
    code = main(["train", "qmvae", "--data", str(data), "--train-fraction", "1.0",
                 "--epochs", "1", "--batch-size", "4", "--hidden", "16", "--latent-dim", "8",
                 "--codebook-size", "16", "--surrogate-warmup", "5", "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(out), "-q"])
    assert code == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "unreadable" in captured.err and "no_face" in captured.err
    model, payload = load_qmvae(out)
    assert payload["train_config"]["mode"] == "surrogate" and payload["training_faces"] == 5
    assert payload["history"][-1]["surrogate_queries"] > 0
    assert model.config.num_inputs == 4
