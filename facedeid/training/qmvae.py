"""Training QM-VAE (Qiu et al., Appl. Sci. 2022, seed 000, §4.2-§5) against a service evaluator.

The loss is Eq. 7::

    L = alpha * L_e + (1 - alpha) * SSE(output, original) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2

(SSE: per-image sum of squared errors, the Gaussian log-likelihood that Eq. 7 writes as
log p(x | z_q(x)), the default; ``reconstruction="mse"`` takes the per-pixel mean instead.)

Eq. 8's service loss L_e (0 when the evaluator gives the output the original's label, else 1) has
no gradient, and the paper treats the evaluator as a black box. L_e is relaxed to a soft
consistency score -- cross-entropy of the output's probabilities against the original's label
(``"ce"``) or KL(p_original || p_output) (``"kl"``) -- and given a gradient in one of three ways:

* ``mode="surrogate"`` (default, black box): a small student network is fitted online to the
  evaluator's answers only -- first on the originals and the de-identified inputs, then on every
  fused face it is queried on -- and the score is back-propagated through the student
  (:mod:`facedeid.training.service_surrogate`).
* ``mode="blackbox"``: antithetic NES/SPSA queries estimate the score's gradient with respect to
  the decoder output (:func:`estimate_score_gradient`). Perturbations are drawn on a coarse grid
  and upsampled, which cuts the estimator's variance from one dimension per pixel to one per grid
  cell. The estimate enters the graph as ``(g.detach() * output).sum()``, whose gradient is ``g``.
* ``mode="whitebox"``: the differentiable torch mini-Xception is back-propagated through.

What the evaluator is shown is what it will see in use (``service_view="pasted"``): the fused
face pasted back into its photo and cropped at the Haar window
(:class:`~facedeid.training.qmvae_data.ServiceViews`).

Optionally (``service_head_weight > 0``, beyond the paper) a service head on the quantized codes
is trained to give the black box's answer on the original, so the discrete codes must carry the
decision the decoder has to render (:attr:`facedeid.models.qmvae.QMVAEConfig.service_classes`).

The original face is only a target: it reaches the loss, never the network
(:meth:`facedeid.models.qmvae.QMVAE.forward` takes the de-identified stack alone).

Data: :mod:`facedeid.training.qmvae_data` (aligned faces, their de-identified stacks and the
service's view of each, cached as npz). The black box and Eq. 8's scores:
:mod:`facedeid.training.blackbox`.

The shipped ``facedeid/checkpoints/qmvae_expression.pt`` was produced by (docs/checkpoints.md)::

    python benchmarks/qmvae_paper.py --alpha 0.99 --identity-weight 1 --epochs 40 \
        --out runs/qmvae/s_id1_0.99.pt --json runs/qmvae/s_id1_0.99.json
    python -c "from facedeid.models.qmvae import export_checkpoint; \
        export_checkpoint('runs/qmvae/s_id1_0.99.pt', 'facedeid/checkpoints/qmvae_expression.pt')"
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidParameterError
from .blackbox import (BlackBoxEvaluator, ExpressionWhiteBox, checked_probabilities,
                       consistency_scores, create_black_box, decision_loss, decisions_differ,
                       unit_to_uint8)
from .qmvae_data import FaceStacks, render_views

log = logging.getLogger(__name__)


# -- zeroth-order gradient ---------------------------------------------------------------------
def estimate_score_gradient(score_fn: Callable[[np.ndarray], np.ndarray], faces: np.ndarray,
                            rng: np.random.Generator, sigma: float = 0.05, pairs: int = 4,
                            grid: int = 16, shared_channels: bool = False) -> np.ndarray:
    """Antithetic NES estimate of d score_i / d face_i for every face of the batch.

    Args:
        score_fn: ``(n, S, S, 3) float32`` -> ``(n,)`` scores; queried ``2 * pairs`` times per
            face in ONE call (the only access to the evaluator).
        faces: ``(B, S, S, 3) float32`` in [0, 1].
        sigma: perturbation size in intensity units.
        pairs: antithetic direction pairs per face.
        grid: directions are Gaussian on a ``grid x grid x 3`` lattice, bilinearly upsampled.
        shared_channels: one direction for all colour channels (a brightness change), which
            divides the search dimension by 3; most face services look at luminance.

    Returns:
        ``(B, S, S, 3) float32`` gradient estimate.
    """
    import cv2

    count, height, width, channels = faces.shape
    drawn = 1 if shared_channels else channels
    coarse = rng.standard_normal((count * pairs, grid, grid, drawn)).astype(np.float32)
    directions = np.stack([cv2.resize(cell, (width, height), interpolation=cv2.INTER_LINEAR)
                           .reshape(height, width, drawn) for cell in coarse])
    directions = np.broadcast_to(directions, (count * pairs, height, width, channels))
    directions = directions.reshape(count, pairs, height, width, channels)
    probes = np.concatenate([faces[:, None] + sigma * directions,
                             faces[:, None] - sigma * directions], axis=1)
    probes = np.clip(probes, 0.0, 1.0).reshape(count * 2 * pairs, height, width, channels)
    scores = np.asarray(score_fn(probes), dtype=np.float64).reshape(count, 2, pairs)
    slopes = (scores[:, 0] - scores[:, 1]) / (2.0 * sigma)  # (B, pairs)
    # Each upsampled direction has per-pixel variance v < 1; dividing by v keeps the estimate
    # unbiased for gradients that are smooth on the grid's scale.
    variance = float(np.mean(directions ** 2)) or 1.0
    return (np.einsum("bp,bphwc->bhwc", slopes, directions) / (pairs * variance)).astype(np.float32)


# -- training ----------------------------------------------------------------------------------
MODES = ("whitebox", "surrogate", "blackbox")


@dataclass
class TrainConfig:
    """Knobs of one training run (stored in the checkpoint; resume refuses a mismatch).

    ``mode`` is how the service term of Eq. 7 gets a gradient: ``"whitebox"`` back-propagates
    through the differentiable mini-Xception; ``"surrogate"`` through a student trained online on
    the black box's answers (:mod:`facedeid.training.service_surrogate`); ``"blackbox"`` uses the
    NES estimate of :func:`estimate_score_gradient`. ``reconstruction`` is the MSE term's
    reduction: ``"mse"`` (per-pixel mean, as §4.2 writes it) or ``"sse"`` (per-image sum, the
    Gaussian log-likelihood ``log p(x|z_q)``; ~S*S*3 times stronger, so alpha means something
    else). ``"sse"`` is the default because with ``"mse"`` the service term dominated: white box
    at alpha 0.4 drove the output away from a face (Haar found 3% of the test outputs at epoch
    10, loss rate 0.84). ``service_view`` is what the service term looks at: ``"pasted"`` -- the
    window the evaluator crops from the image with the fused face pasted back
    (:class:`~facedeid.training.qmvae_data.ServiceViews`) -- or ``"crop"``, the bare aligned crop.
    """

    # 0.9: the best of the measured sweep at 40 epochs with the SSE term (docs/benchmarks.md);
    # the paper's 0.4 weighs a per-pixel MSE, so the numbers are not interchangeable.
    alpha: float = 0.9
    epochs: int = 40
    mode: str = "surrogate"
    evaluator: str = "expression"
    score: str = "ce"
    learning_rate: float = 1e-3
    batch_size: int = 8
    reconstruction: str = "sse"
    service_view: str = "pasted"
    sigma: float = 0.05
    pairs: int = 1
    grid: int = 8
    shared_channels: bool = True
    service_faces: int = 0  # black-box mode: faces per batch that get NES queries (0 = all)
    # Black-box mode: each face's NES estimate is shrunk to at most this multiple of the norm of
    # its reconstruction gradient 2(y - x) (0 = no cap). Measured: uncapped, the estimate's noise
    # (norm ~sqrt(search dims) x the true gradient) swamped the fusion and the decoder collapsed
    # to one flat colour within 5 epochs.
    service_norm_cap: float = 1.0
    surrogate_warmup_steps: int = 300  # student steps on the warm-up pool before training
    # Beyond the paper (it never measures privacy): gamma * mean(relu(cos(R(y), R(x)) - margin))
    # with R the project's surrogate CosFace recognizer, pushing the fused face y away from the
    # original x's identity. Privacy is then measured with dlib, which training never sees.
    identity_weight: float = 0.0
    identity_margin: float = 0.0
    # Beyond the paper: weight of the service head's loss (QMVAEConfig.service_classes): the
    # codes must predict the black box's decision on the original (answers the run queries
    # anyway as Eq. 8's reference). 0 = no head.
    service_head_weight: float = 0.0
    seed: int = 0
    eval_epochs: tuple[int, ...] = (10, 20, 30, 40)
    checkpoint_every: int = 5

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidParameterError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {', '.join(MODES)}, "
                                        f"got {self.mode!r}")
        if self.score not in ("ce", "kl"):
            raise InvalidParameterError(f"score must be ce or kl, got {self.score!r}")
        if self.reconstruction not in ("mse", "sse"):
            raise InvalidParameterError(f"reconstruction must be mse or sse, got "
                                        f"{self.reconstruction!r}")
        if self.service_view not in ("pasted", "crop"):
            raise InvalidParameterError(f"service_view must be pasted or crop, got "
                                        f"{self.service_view!r}")
        if self.mode == "whitebox" and self.evaluator != "expression":
            raise InvalidParameterError("whitebox mode is available for the expression evaluator "
                                        "only (the differentiable mini-Xception); use surrogate")
        if self.epochs < 1 or self.batch_size < 1 or self.pairs < 1:
            raise InvalidParameterError("epochs, batch_size and pairs must be >= 1")
        if self.service_head_weight < 0:
            raise InvalidParameterError("service_head_weight must be >= 0")
        if self.identity_weight < 0 or not -1.0 <= self.identity_margin <= 1.0:
            raise InvalidParameterError("identity_weight must be >= 0 and identity_margin in "
                                        "[-1, 1]")


# Keys that change what is being optimised: resuming with a different value is refused.
_RESUME_KEYS = ("alpha", "mode", "evaluator", "score", "learning_rate", "batch_size",
                "reconstruction", "service_view", "sigma", "pairs", "grid", "shared_channels",
                "service_faces", "service_norm_cap", "surrogate_warmup_steps",
                "identity_weight", "identity_margin", "service_head_weight", "seed")


def _to_tensor(images: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def _to_images(tensor) -> np.ndarray:
    """``(B, 3, V, V)`` tensor in [0, 1] -> ``(B, V, V, 3) float32`` numpy (a black-box query)."""
    return tensor.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)


def _uses_views(data: FaceStacks, config: TrainConfig) -> bool:
    if config.service_view == "crop":
        return False
    if data.views is None:
        raise InvalidParameterError("service_view='pasted' needs stacks built with service views "
                                    "(build_face_stacks); pass service_view='crop' otherwise")
    return True


def service_inputs(data: FaceStacks, faces, config: TrainConfig, indices=None):
    """What the service is shown for fused ``faces`` (tensor): pasted windows or the crops."""
    if not _uses_views(data, config):
        return faces
    return render_views(faces, data.views, indices)


def original_service_inputs(data: FaceStacks, config: TrainConfig) -> np.ndarray:
    """``(N, V, V, 3) float32`` in [0, 1]: what the service sees of the untouched originals."""
    if _uses_views(data, config):
        return data.views.background.astype(np.float32) / 255.0
    return data.originals.astype(np.float32) / 255.0


def window_loss_rate(outputs: np.ndarray, data: FaceStacks, evaluator: BlackBoxEvaluator,
                     reference: np.ndarray | None = None,
                     config: TrainConfig | None = None) -> float:
    """Eq. 8 averaged over fused ``(N, S, S, 3) uint8`` faces, with the service shown what
    training shows it (the pasted-back faces on the originals' Haar windows by default)."""
    config = config or TrainConfig()
    if reference is None:
        reference = checked_probabilities(evaluator, original_service_inputs(data, config))
    shown = _to_images(service_inputs(data, _to_tensor(outputs), config))
    answers = checked_probabilities(evaluator, shown)
    return float(decisions_differ(reference, answers, evaluator.kind).mean())


def service_loss_rate(model, data: FaceStacks, evaluator: BlackBoxEvaluator,
                      reference: np.ndarray | None = None,
                      config: TrainConfig | None = None) -> dict[str, float]:
    """Eq. 8 of ``model``'s fused faces over ``data`` (:func:`window_loss_rate`), plus the MSE."""
    outputs = model.fuse(data.stacks())
    mse = float(np.mean((outputs.astype(np.float32) - data.originals) ** 2) / 255.0 ** 2)
    return {"service_loss_rate": window_loss_rate(outputs, data, evaluator, reference, config),
            "mse": mse}


class _ServiceTerm:
    """The alpha * L_e part of Eq. 7 for one mode: ``term(shown, reference) -> (loss, answers)``.

    ``shown`` is the (differentiable) service input of the batch, ``reference`` the black box's
    answers on the originals. ``answers`` are the service's probabilities on ``shown`` (used to
    count Eq. 8 on the batch), or None where the mode never queries them.
    """

    def __init__(self, config: TrainConfig, evaluator: BlackBoxEvaluator, white_box,
                 rng: np.random.Generator) -> None:
        self.config, self.evaluator, self.white_box, self.rng = config, evaluator, white_box, rng
        self.surrogate = None
        self.last_soft = np.zeros(0)

    def start_surrogate(self, train: FaceStacks, reference: np.ndarray,
                        stored: dict | None = None) -> dict[str, float]:
        """Fill the student's replay pool with the originals (their answers: ``reference``, the
        run's fixed targets) and the de-identified inputs as the service sees them, then warm it
        up -- or, when resuming, load the ``stored`` student instead. Returns the queries spent
        and the student's agreement with the black box."""
        import torch

        from .service_surrogate import OnlineSurrogate

        self.surrogate = OnlineSurrogate(reference.shape[1], self.evaluator.kind,
                                         seed=self.config.seed)
        self.surrogate.remember(unit_to_uint8(original_service_inputs(train, self.config)),
                                reference)
        for position in range(train.versions.shape[1]):
            version = _to_tensor(train.versions[:, position])
            with torch.no_grad():
                pool = _to_images(service_inputs(train, version, self.config))
            for first in range(0, len(pool), 256):
                chunk = pool[first:first + 256]
                self.surrogate.remember(unit_to_uint8(chunk),
                                        checked_probabilities(self.evaluator, chunk))
        setup: dict[str, float] = {"surrogate_warmup_queries": self.surrogate.queries}
        if stored is not None:
            self.surrogate.network.load_state_dict(stored["network"])
            self.surrogate.optimizer.load_state_dict(stored["optimizer"])
            self.surrogate.queries += stored["queries"]  # the run's total, not this session's
        else:
            setup["surrogate_warmup_loss"] = self.surrogate.warm_up(
                self.config.surrogate_warmup_steps)
        sample = self.rng.integers(0, len(self.surrogate.pool_images), size=512)
        agreement = self.surrogate.agreement(
            torch.from_numpy(self.surrogate.pool_images[sample]).permute(0, 3, 1, 2).float() / 255,
            self.surrogate.pool_answers[sample])
        return {**setup, "surrogate_warmup_agreement": agreement}

    def __call__(self, shown, reference: np.ndarray, cap_norms=None):
        """``cap_norms``: per-face norms of the reconstruction gradient (NES cap, blackbox only)."""
        import torch
        import torch.nn.functional as F

        config, kind = self.config, self.evaluator.kind
        if config.alpha == 0.0:  # plain fusion: the service is not queried while training
            self.last_soft = np.zeros(len(reference))
            return torch.zeros(()), None
        if config.mode == "whitebox":
            logits = self.white_box.logits(shown)
            labels = torch.from_numpy(reference.argmax(axis=1))
            if config.score == "ce":
                loss = F.cross_entropy(logits, labels)
            else:
                loss = F.kl_div(F.log_softmax(logits, 1), torch.from_numpy(reference).float(),
                                reduction="batchmean")
            answers = torch.softmax(logits.detach(), 1).numpy()
            self.last_soft = consistency_scores(reference, answers, kind, config.score)
            return loss, answers
        if config.mode == "surrogate":
            images = _to_images(shown)
            answers = checked_probabilities(self.evaluator, images)  # one query per fused face
            self.surrogate.remember(unit_to_uint8(images), answers)
            self.surrogate.step(shown, answers)
            self.last_soft = consistency_scores(reference, answers, kind, config.score)
            return self.surrogate.service_loss(shown, reference), answers
        return self._nes(shown, reference, cap_norms), None

    def _nes(self, shown, reference: np.ndarray, cap_norms):
        """NES estimate of the score's gradient on ``shown``, entered as ``(g * shown).sum()``."""
        import torch

        config = self.config
        probed = len(shown) if config.service_faces <= 0 else min(config.service_faces, len(shown))
        images = _to_images(shown[:probed])
        reference = reference[:probed]
        repeats = 2 * config.pairs
        probe_scores: list[np.ndarray] = []

        def score_fn(probes: np.ndarray) -> np.ndarray:
            answers = checked_probabilities(self.evaluator, probes)
            scores = consistency_scores(np.repeat(reference, repeats, axis=0), answers,
                                        self.evaluator.kind, config.score)
            probe_scores.append(scores)
            return scores

        gradient = estimate_score_gradient(score_fn, images, self.rng, config.sigma, config.pairs,
                                           config.grid, config.shared_channels)
        gradient = torch.from_numpy(gradient).permute(0, 3, 1, 2)
        if config.service_norm_cap > 0 and cap_norms is not None:
            own = cap_norms[:probed]
            size_now = gradient.flatten(1).norm(dim=1) + 1e-8
            shrink = torch.clamp(config.service_norm_cap * own / size_now, max=1.0)
            gradient = gradient * shrink[:, None, None, None]
        # The probes' mean score stands in for the score at the output (no extra query).
        self.last_soft = probe_scores[0].reshape(probed, repeats).mean(axis=1)
        return (gradient * shown[:probed]).sum() / probed


def train_qmvae(train: FaceStacks, config: TrainConfig, model_config=None, *,
                test: FaceStacks | None = None, out: str | os.PathLike | None = None,
                resume: bool = False, progress: bool = True,
                on_eval: Callable[[int, Any], dict[str, float]] | None = None,
                evaluator: BlackBoxEvaluator | None = None):
    """Train a QM-VAE; returns ``(model, history)``.

    Args:
        train, test: face stacks (``test`` is used for the service loss rate at ``eval_epochs``).
        model_config: :class:`facedeid.models.qmvae.QMVAEConfig` (its ``inputs`` must match the
            stacks' methods; the caller is responsible for that).
        out: checkpoint path; written atomically every ``checkpoint_every`` epochs and at the end.
        resume: continue from ``out`` if it exists (same config required).
        on_eval: extra metrics at each evaluation epoch, ``on_eval(epoch, model) -> dict``.
        evaluator: black box to use (default: :func:`create_black_box` of ``config.evaluator``).
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from ..models.qmvae import QMVAE, QMVAEConfig, read_checkpoint, save_checkpoint

    config.check()
    model_config = model_config or QMVAEConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    white_box = ExpressionWhiteBox() if config.mode == "whitebox" else None
    if evaluator is None:
        evaluator = white_box if white_box is not None else create_black_box(config.evaluator)
    # The originals' answers are fixed targets: query them once.
    train_reference = checked_probabilities(evaluator, original_service_inputs(train, config))
    if config.service_head_weight > 0:
        classes = train_reference.shape[1]
        if model_config.service_classes not in (0, classes):
            raise InvalidParameterError(
                f"the model's service head has {model_config.service_classes} outputs but the "
                f"evaluator {evaluator.name!r} answers with {classes}")
        model_config = replace(model_config, service_classes=classes)
    model = QMVAE(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    stored_student = None
    if resume and out is not None and Path(out).is_file():
        payload = read_checkpoint(out)
        stored = payload.get("train_config", {})
        mismatched = [key for key in _RESUME_KEYS if stored.get(key) != getattr(config, key)]
        if mismatched or payload["config"] != asdict(model_config):
            raise InvalidParameterError(
                f"cannot resume {out}: it was trained with different settings "
                f"({', '.join(mismatched) or 'model architecture/inputs'}); use another --out")
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        history = payload.get("history", [])
        start_epoch = int(payload["epoch"])
        stored_student = payload.get("surrogate")
        rng = np.random.default_rng([config.seed, start_epoch])
        torch.manual_seed(config.seed + start_epoch)
    if start_epoch >= config.epochs:
        return model.eval(), history

    test_reference = None if test is None else \
        checked_probabilities(evaluator, original_service_inputs(test, config))
    train_stacks = train.stacks()
    service_term = _ServiceTerm(config, evaluator, white_box, rng)
    setup: dict[str, Any] = {}
    if config.mode == "surrogate" and config.alpha > 0:
        setup = service_term.start_surrogate(train, train_reference, stored_student)
        log.info("surrogate warm-up: %s", setup)

    identity = None
    if config.identity_weight > 0:
        from ..models.surrogate_recognizer import load_surrogate_recognizer
        identity = load_surrogate_recognizer()
        with torch.no_grad():
            original_identities = torch.from_numpy(identity.embed(train.originals))

    def save(epoch: int) -> None:
        if out is not None:
            extra = {} if service_term.surrogate is None else \
                {"surrogate": service_term.surrogate.state_dict()}
            save_checkpoint(out, model, {
                "epoch": epoch, "optimizer": optimizer.state_dict(), "history": history,
                "train_config": asdict(config), "training_faces": len(train),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})

    batches_per_epoch = int(np.ceil(len(train) / config.batch_size))
    bar = tqdm(total=(config.epochs - start_epoch) * batches_per_epoch, unit="batch",
               disable=not progress, dynamic_ncols=True, desc="qmvae")
    started = time.perf_counter()
    for epoch in range(start_epoch + 1, config.epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        sums = {"loss": 0.0, "mse": 0.0, "service": 0.0, "changed": 0.0,  # Eq. 7 with soft L_e
                "identity_cos": 0.0, "head": 0.0}
        for first in range(0, len(order), config.batch_size):
            index = np.sort(order[first:first + config.batch_size])
            stack = _to_tensor(train_stacks[index])
            target = _to_tensor(train.originals[index])
            output = model(stack)
            faces = output.reconstruction
            mse = F.mse_loss(faces, target)
            reconstruction = mse if config.reconstruction == "mse" else \
                F.mse_loss(faces, target, reduction="sum") / len(index)
            reference = train_reference[index]
            shown = service_inputs(train, faces, config, index) if config.alpha > 0 else faces
            cap_norms = (2.0 * (faces.detach() - target)).flatten(1).norm(dim=1) \
                if config.mode == "blackbox" else None
            service, answers = service_term(shown, reference, cap_norms)
            soft = service_term.last_soft
            loss = (config.alpha * service + (1.0 - config.alpha) * reconstruction
                    + output.codebook_loss + model.beta * output.commitment_loss)
            if output.service_logits is not None and config.service_head_weight > 0:
                head = decision_loss(output.service_logits, reference, evaluator.kind)
                loss = loss + config.service_head_weight * head
                sums["head"] += float(head.detach()) * len(index)
            if identity is not None:
                cosine = (identity(faces) * original_identities[index]).sum(dim=1)
                push = F.relu(cosine - config.identity_margin).mean()
                loss = loss + config.identity_weight * push
                sums["identity_cos"] += float(cosine.detach().sum())
            reported = (config.alpha * float(soft.mean())
                        + (1.0 - config.alpha) * float(reconstruction.detach())
                        + float(output.codebook_loss.detach())
                        + model.beta * float(output.commitment_loss.detach()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            size = len(index)
            sums["loss"] += reported * size
            sums["mse"] += float(mse.detach()) * size
            sums["service"] += float(soft.mean()) * size
            if answers is not None:
                sums["changed"] += float(decisions_differ(reference, answers, evaluator.kind).sum())
            bar.update(1)
            bar.set_postfix(epoch=epoch, mse=f"{float(mse.detach()):.4f}",
                            svc=f"{float(soft.mean()):.3f}")
        record: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v / len(train)
                                                     for k, v in sums.items()},
                                  "seconds": round(time.perf_counter() - started, 1)}
        if epoch == start_epoch + 1:
            record.update(setup)
        if service_term.surrogate is not None:
            record["surrogate_queries"] = service_term.surrogate.queries
        if epoch in config.eval_epochs or epoch == config.epochs:
            if test is not None:
                metrics = service_loss_rate(model, test, evaluator, test_reference, config)
                record.update({f"test_{k}": v for k, v in metrics.items()})
            if on_eval is not None:
                record.update(on_eval(epoch, model))
            bar.write(f"epoch {epoch}: " + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        history.append(record)
        if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
            save(epoch)
    bar.close()
    return model.eval(), history
