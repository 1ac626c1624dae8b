"""The service evaluator as a black box: adapters, answer checks and Eq. 8's scores.

QM-VAE (Qiu et al., Appl. Sci. 2022, seed 000, §4.2, Eq. 8) trains against a service whose
internals it may not read: the trainer only ever calls ``probabilities(faces)``. This module
holds what talks to that black box -- the :class:`BlackBoxEvaluator` protocol, the adapters for
the project's services (:func:`create_black_box`), :func:`checked_probabilities` (a foreign
evaluator's answer is validated before training trusts it) -- and the scores computed from its
answers: the soft consistency of Eq. 8 (:func:`consistency_scores`, :func:`decision_loss`) and
Eq. 8 itself (:func:`decisions_differ`).

Used by :mod:`facedeid.training.qmvae` (the trainer), :mod:`facedeid.training.service_surrogate`
(the online student) and the QM-VAE benchmarks.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import FaceDeidError, InvalidParameterError


class BlackBoxEvaluatorError(FaceDeidError):
    """The service evaluator raised, or returned something that is not a probability table."""



def unit_to_uint8(images: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float images -> rounded ``uint8`` (what a service or the student is given)."""
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)



class BlackBoxEvaluator(Protocol):
    """A service queried only through its outputs.

    ``probabilities(faces)``: ``(B, S, S, 3) float32`` RGB in [0, 1] -> ``(B, K)`` probabilities
    (rows summing to 1 for ``kind == "multiclass"``; independent per column for ``"multilabel"``).
    """

    name: str
    kind: str

    def probabilities(self, faces: np.ndarray) -> np.ndarray: ...


def checked_probabilities(evaluator: BlackBoxEvaluator, faces: np.ndarray) -> np.ndarray:
    """Query ``evaluator`` and validate its answer; raise :class:`BlackBoxEvaluatorError` if bad."""
    try:
        answer = evaluator.probabilities(faces)
    except FaceDeidError:
        raise
    except Exception as error:  # noqa: BLE001 - the evaluator is foreign code
        raise BlackBoxEvaluatorError(
            f"service evaluator {getattr(evaluator, 'name', evaluator)!r} raised "
            f"{type(error).__name__}: {error}") from error
    try:
        answer = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        answer = None
    if answer is None or answer.ndim != 2 or answer.shape[0] != len(faces) or answer.shape[1] < 1:
        shape = None if answer is None else answer.shape
        raise BlackBoxEvaluatorError(
            f"service evaluator {getattr(evaluator, 'name', evaluator)!r} must return a "
            f"({len(faces)}, K) probability array, returned shape {shape}")
    if not np.isfinite(answer).all() or (answer < -1e-6).any() or (answer > 1 + 1e-6).any():
        raise BlackBoxEvaluatorError(
            f"service evaluator {getattr(evaluator, 'name', evaluator)!r} returned values outside "
            "[0, 1] or NaN; it must return probabilities")
    if getattr(evaluator, "kind", "multiclass") == "multiclass" and \
            not np.allclose(answer.sum(axis=1), 1.0, atol=1e-3):
        raise BlackBoxEvaluatorError(
            f"service evaluator {getattr(evaluator, 'name', evaluator)!r} returned rows that do "
            "not sum to 1; a multiclass evaluator must return a probability distribution")
    return np.clip(answer, 1e-7, 1.0)


class ExpressionBlackBox:
    """The paper's expression service (mini-Xception, §3.2) queried through outputs only.

    Runs without autograd on numpy arrays, so the trainer cannot reach its gradients.
    """

    name = "expression"
    kind = "multiclass"

    def __init__(self) -> None:
        from ..models.mini_xception import EXPRESSIONS, load_mini_xception
        self.network = load_mini_xception().eval()
        self.classes = EXPRESSIONS

    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        import torch
        tensor = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.float32)).permute(0, 3, 1, 2)
        with torch.no_grad():
            return torch.softmax(self.network(_classifier_input(tensor)), dim=1).numpy()


def _classifier_input(faces):
    """``(B, 3, S, S)`` RGB in [0, 1] -> ``(B, 1, 64, 64)`` gray in [-1, 1] (mini-Xception input)."""
    import torch.nn.functional as F
    gray = 0.299 * faces[:, 0:1] + 0.587 * faces[:, 1:2] + 0.114 * faces[:, 2:3]
    if gray.shape[-1] != 64 or gray.shape[-2] != 64:
        gray = F.interpolate(gray, size=(64, 64), mode="bilinear", align_corners=False,
                             antialias=True)
    return (gray - 0.5) * 2.0


class ExpressionWhiteBox:
    """The same service, differentiable: ``logits(faces (B, 3, S, S) tensor) -> (B, 7)``."""

    name = "expression"
    kind = "multiclass"

    def __init__(self) -> None:
        from ..models.mini_xception import load_mini_xception
        self.network = load_mini_xception().eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    def logits(self, faces):
        return self.network(_classifier_input(faces))

    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        import torch
        tensor = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.float32)).permute(0, 3, 1, 2)
        with torch.no_grad():
            return torch.softmax(self.logits(tensor), dim=1).numpy()


class ServiceBlackBox:
    """Adapter for a :mod:`facedeid.evaluation.services` service (``.predict(images, boxes)``).

    The whole aligned crop is passed as the face box, so no detector runs inside the loop.
    """

    def __init__(self, service_name: str) -> None:
        from ..evaluation.services import create_service
        self.service = create_service(service_name, crop="box")
        self.name = service_name
        self.kind = "multilabel" if service_name == "attributes" else "multiclass"

    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        images = list(unit_to_uint8(faces))
        boxes = [np.array([0, 0, face.shape[1], face.shape[0]], np.float32) for face in images]
        return np.asarray(self.service.predict(images, boxes).probabilities)


def create_black_box(name: str) -> BlackBoxEvaluator:
    """``"expression"`` (built in) or any service name of :mod:`facedeid.evaluation.services`."""
    if name == "expression":
        return ExpressionBlackBox()
    try:
        return ServiceBlackBox(name)
    except ImportError as error:
        raise InvalidParameterError(f"evaluator {name!r} needs facedeid.evaluation.services "
                                    f"({error})") from None


# -- soft consistency scores (the relaxed Eq. 8) -----------------------------------------------
def consistency_scores(reference: np.ndarray, probabilities: np.ndarray, kind: str,
                       score: str = "ce") -> np.ndarray:
    """Per-face disagreement between the original's and the output's service answers.

    Args:
        reference: ``(B, K)`` service probabilities on the originals.
        probabilities: ``(B, K)`` service probabilities on the outputs.
        kind: ``"multiclass"`` or ``"multilabel"``.
        score: ``"ce"`` (cross-entropy to the original's decision) or ``"kl"`` (soft).

    Returns:
        ``(B,)`` float64; 0 means perfect agreement.
    """
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    if kind == "multilabel":
        target = (reference >= 0.5).astype(np.float64) if score == "ce" else reference
        return -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean(axis=1)
    if score == "ce":
        return -np.log(p[np.arange(len(p)), reference.argmax(axis=1)])
    q = np.clip(reference, 1e-7, 1.0)
    return (q * (np.log(q) - np.log(p))).sum(axis=1)


def decision_loss(logits, reference: np.ndarray, kind: str):
    """Differentiable relaxed Eq. 8 for ``(B, K)`` logits: cross-entropy to the original's
    decision (multiclass), or binary cross-entropy to its thresholded answers (multilabel)."""
    import torch
    import torch.nn.functional as F

    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(
            logits, torch.from_numpy((reference >= 0.5).astype(np.float32)))
    return F.cross_entropy(logits, torch.from_numpy(reference.argmax(axis=1)))


def decisions_differ(reference: np.ndarray, probabilities: np.ndarray, kind: str) -> np.ndarray:
    """Eq. 8 per face: 1 where the service's decision changed (any attribute, for multilabel)."""
    if kind == "multilabel":
        return ((reference >= 0.5) != (probabilities >= 0.5)).any(axis=1).astype(np.float64)
    return (reference.argmax(axis=1) != probabilities.argmax(axis=1)).astype(np.float64)

