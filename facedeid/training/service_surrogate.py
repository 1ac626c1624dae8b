"""An online student of a black-box service: QM-VAE's third way to train against the evaluator.

QM-VAE (Qiu et al. 2022, seed 000, §4.2) treats the service evaluator as a black box and its
Eq. 8 loss is a 0/1 decision without a gradient. The NES estimate in
:func:`facedeid.training.qmvae.estimate_score_gradient` needs many queries per face for a
usable direction (measured: 2 queries per face per step did not beat alpha = 0). This module is
the other remedy the issue names: a small network trained *only on the black box's answers*
(knowledge distillation; no weights, logits or gradients of the evaluator are read) whose
gradient stands in for the evaluator's.

Query budget: every face of the warm-up pool once (originals and their de-identified inputs,
as the service would see them) and then every fused face of every training batch once, the same
answers the trainer needs anyway to count Eq. 8 on the batch.

Deliberately a plain small CNN, not a copy of the evaluator's architecture: the trainer must
work with services whose internals are unknown.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _block(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs),
            nn.ReLU(), nn.MaxPool2d(2)]


class StudentNet(nn.Module):
    """``(B, 3, V, V)`` RGB in [0, 1] -> ``(B, K)`` logits; four conv stages and a linear head.

    Works at ``resolution`` 32 and width 16: ~3.4 M multiply-adds per image, so
    one student step per generator step costs about as much as the generator step itself on one
    CPU thread (width 32 at 64 px was ~8x slower and dominated training).
    """

    def __init__(self, classes: int, width: int = 16, resolution: int = 32) -> None:
        super().__init__()
        self.resolution = resolution
        self.features = nn.Sequential(*_block(3, width), *_block(width, 2 * width),
                                      *_block(2 * width, 4 * width), *_block(4 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution),
                                   mode="bilinear", align_corners=False, antialias=True)
        return self.head(self.features(images * 2.0 - 1.0))


class OnlineSurrogate:
    """Student that imitates a black box from ``(image, answer)`` pairs, with a replay pool.

    Args:
        classes: K, the width of the black box's answer.
        kind: ``"multiclass"`` (answers are distributions; soft cross-entropy) or
            ``"multilabel"`` (independent probabilities; binary cross-entropy).
        pool_size: answered images kept for replay, so the student does not forget the
            originals while it follows the generator's moving outputs.
    """

    def __init__(self, classes: int, kind: str, seed: int = 0, learning_rate: float = 1e-3,
                 pool_size: int = 20000) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=generator)))
            self.network = StudentNet(classes)
        for parameter in self.network.parameters():
            parameter.requires_grad_(True)
        self.kind = kind
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=learning_rate)
        self.rng = np.random.default_rng(seed)
        self.pool_size = pool_size
        self.pool_images = np.zeros((0,), np.uint8)
        self.pool_answers = np.zeros((0, classes), np.float32)
        self.queries = 0

    # -- losses ------------------------------------------------------------------------------
    def imitation_loss(self, logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """How far the student's answer is from the black box's (what distillation minimises)."""
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, answers)
        return -(answers * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

    def service_loss(self, images: torch.Tensor, reference: np.ndarray) -> torch.Tensor:
        """Differentiable relaxed Eq. 8: the student's disagreement with the original's decision."""
        from .blackbox import decision_loss

        self.network.eval()
        return decision_loss(self.network(images), reference, self.kind)

    def agreement(self, images: torch.Tensor, answers: np.ndarray) -> float:
        """Share of images where the student's decision equals the black box's."""
        self.network.eval()
        with torch.no_grad():
            logits = self.network(images)
        if self.kind == "multilabel":
            return float(((logits.numpy() >= 0) == (answers >= 0.5)).all(axis=1).mean())
        return float((logits.argmax(1).numpy() == answers.argmax(1)).mean())

    # -- fitting -----------------------------------------------------------------------------
    def remember(self, images: np.ndarray, answers: np.ndarray) -> None:
        """Add answered ``(n, V, V, 3) uint8`` images to the replay pool (oldest dropped)."""
        self.queries += len(images)
        if self.pool_images.size == 0:
            self.pool_images = images.copy()
            self.pool_answers = answers.astype(np.float32)
        else:
            self.pool_images = np.concatenate([self.pool_images, images])[-self.pool_size:]
            self.pool_answers = np.concatenate([self.pool_answers,
                                                answers.astype(np.float32)])[-self.pool_size:]

    def step(self, images: torch.Tensor | None = None, answers: np.ndarray | None = None,
             replay: int = 16) -> float:
        """One Adam step on fresh answered images plus ``replay`` pool samples; returns the loss."""
        batches, targets = [], []
        if images is not None:
            batches.append(images.detach())
            targets.append(torch.from_numpy(np.asarray(answers, np.float32)))
        if replay and len(self.pool_images):
            chosen = self.rng.integers(0, len(self.pool_images), size=replay)
            batches.append(torch.from_numpy(self.pool_images[chosen]).permute(0, 3, 1, 2).float()
                           / 255.0)
            targets.append(torch.from_numpy(self.pool_answers[chosen]))
        if not batches:
            return 0.0
        self.network.train()
        loss = self.imitation_loss(self.network(torch.cat(batches)), torch.cat(targets))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def warm_up(self, steps: int, batch_size: int = 64) -> float:
        """Fit the pool alone for ``steps`` steps before the generator starts."""
        loss = 0.0
        for _ in range(steps):
            loss = self.step(replay=batch_size)
        return loss

    def state_dict(self) -> dict:
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "queries": self.queries}
