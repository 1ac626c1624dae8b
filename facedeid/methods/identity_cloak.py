"""Adversarial identity cloak: an L∞-bounded PGD perturbation against a face recognizer.

The Fawkes / LowKey family (book ch. 3.1.3, adversarial-perturbation methods; Shan et al.,
"Fawkes", USENIX Security 2020; Cherepanova et al., "LowKey", ICLR 2021; EEAE seed 004 §II lists
both as baselines): change the photo imperceptibly so a recognizer's embedding of it moves away
from the person's own embedding (``target="away"``) or toward someone else's
(``target="gallery"``: the gallery face the recognizer finds least similar, as Fawkes picks a
dissimilar target class).

Optimisation (projected gradient descent, Madry et al. ICLR 2018, Eq. 2), on the aligned face x
in [0, 1] with δ in the ball ||δ||∞ <= ε (ε = ``eps`` / 255):

    away:    δ <- Π_ε( δ - α · sign ∇_δ cos(f(x + δ), f(x)) )
    gallery: δ <- Π_ε( δ + α · sign ∇_δ cos(f(x + δ), f(t)) )

starting from a uniform random δ, for ``steps`` steps of size α (``step_size`` / 255). f is the
PyTorch surrogate :mod:`facedeid.models.surrogate_recognizer` — the only differentiable
recognizer available offline. With ``augment=true`` every step sees a random flip and a 1–2 px
shift of the face (expectation over transformation, Athalye et al. ICML 2018), which LowKey uses
to make cloaks survive re-alignment; δ is confined to the pasted face region (``crop.mask``).

The cloak is optimised against the surrogate only; whether it fools another recognizer
(transfer, e.g. to dlib's ResNet) is what ``benchmarks/privacy_methods.py`` measures.
"""
from __future__ import annotations

import numpy as np

from ..alignment import FaceCrop
from ..errors import InvalidParameterError
from .base import DeidMethod, FaceContext, Param, require_positive
from .registry import register


def pgd_identity_cloak(faces: np.ndarray, model, eps: float = 8.0, steps: int = 20,
                       step_size: float | None = None, targets: np.ndarray | None = None,
                       masks: np.ndarray | None = None, augment: bool = True,
                       rng: np.random.Generator | None = None) -> np.ndarray:
    """Cloak a batch of aligned faces.

    Args:
        faces: ``(N, S, S, 3)`` uint8 RGB aligned crops.
        model: a differentiable recognizer: ``(N, 3, S, S)`` float in [0, 1] -> ``(N, D)``
            unit embeddings (e.g. :class:`~facedeid.models.surrogate_recognizer.SurrogateRecognizer`).
        eps: L∞ budget in grey levels (0–255 scale).
        steps: PGD iterations.
        step_size: α in grey levels; ``None`` = 2.5 · eps / steps.
        targets: ``(N, D)`` embeddings to move toward; ``None`` = move away from the own one.
        masks: ``(N, S, S)`` where the perturbation may go (> 0); ``None`` = everywhere.
        augment: random flip / shift per step (expectation over transformation).
        rng: seeds the random start and augmentations (reproducible cloaks).

    Returns:
        ``(N, S, S, 3)`` uint8, with ``|out - faces| <= eps`` everywhere.
    """
    import torch

    if not np.isfinite(eps) or eps <= 0:
        raise InvalidParameterError(f"eps (the L∞ budget in grey levels) must be > 0, got {eps}")
    if steps < 1:
        raise InvalidParameterError(f"steps must be >= 1, got {steps}")
    rng = rng if rng is not None else np.random.default_rng(0)
    generator = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    budget = float(eps) / 255.0
    alpha = (step_size if step_size else 2.5 * eps / steps) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float() / 255.0
    region = (torch.ones_like(x[:, :1]) if masks is None
              else torch.from_numpy((np.asarray(masks) > 0).astype(np.float32))[:, None])
    with torch.no_grad():
        anchor = (model(x) if targets is None
                  else torch.nn.functional.normalize(torch.as_tensor(targets).float(), dim=1))
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * budget * region
    delta = (x + delta).clamp(0, 1) - x
    direction = 1.0 if targets is None else -1.0  # descend on similarity, or ascend toward target
    for _ in range(steps):
        delta.requires_grad_(True)
        view = x + delta
        if augment:
            if torch.rand(1, generator=generator).item() < 0.5:
                view = view.flip(-1)
            shift = torch.randint(-2, 3, (2,), generator=generator)
            view = torch.roll(view, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        similarity = (model(view) * anchor).sum(dim=1).sum()
        gradient, = torch.autograd.grad(similarity, delta)
        with torch.no_grad():
            delta = delta - direction * alpha * gradient.sign() * region
            delta = delta.clamp(-budget, budget)
            delta = (x + delta).clamp(0, 1) - x
    out = torch.round((x + delta.detach()) * 255.0).clamp(0, 255)
    # rounding can never leave the integer ball since x is integral and |δ| <= eps
    return out.permute(0, 2, 3, 1).to(torch.uint8).numpy()


@register
class IdentityCloak(DeidMethod):
    """PGD cloak on the aligned face against the surrogate recognizer (Fawkes/LowKey family)."""

    name = "identity_cloak"
    summary = "L∞-bounded PGD cloak against a PyTorch surrogate recognizer (Fawkes/LowKey family)"
    reference = ("Shan et al., Fawkes, USENIX Sec. 2020; Cherepanova et al., LowKey, ICLR 2021; "
                 "PGD: Madry et al., ICLR 2018, Eq. 2; book ch. 3.1.3")
    space = "aligned"
    cover_whole_box = False  # an invisible perturbation, not a replacement (see DeidMethod)
    trained_with = ("surrogate",)  # PGD on the surrogate's embedding (see DeidMethod)
    aligned_size = 128
    weakness = ("keeps identity for recognizers it was not optimised on: dlib still identified "
                "every CelebA face (rank-1 1.000, SDR 0.000) at eps 8 and 16; only the surrogate is "
                "fooled, and only from eps 16 (docs/benchmarks.md, issue 6)")
    params = (
        Param("eps", float, 8.0, "L∞ budget in grey levels (0-255). No budget measured so far "
              "hides a face from dlib (see the method's weakness); below 1 grey level the 8-bit "
              "rounding of the output erases the perturbation (|δ| < 0.5 rounds back to the "
              "original pixel), so such budgets are refused",
              minimum=1e-6, maximum=255, safe_min=1),
        Param("steps", int, 20, "PGD iterations", minimum=1, maximum=1000),
        Param("step_size", float, 0.0, "PGD step in grey levels; 0 = 2.5 * eps / steps",
              minimum=0, maximum=255),
        Param("target", str, "away", "push away from the own embedding, or toward the least "
              "similar gallery face", choices=("away", "gallery")),
        Param("gallery", str, "", "target=gallery: folder of face photos (as for ksame); empty = "
              "celeba-id200 train split when ../shared/data exists"),
        Param("augment", bool, True, "random flip/shift per step (helps cloaks survive re-alignment)"),
        Param("checkpoint", str, "", "surrogate recognizer .pt; empty = the shipped checkpoint"),
    )

    def __init__(self, **params):
        require_positive(params, "eps", "the L∞ budget in grey levels")
        super().__init__(**params)

    def _model(self):
        if not hasattr(self, "_surrogate"):
            from ..models.surrogate_recognizer import load_surrogate_recognizer
            self._surrogate = load_surrogate_recognizer(self.config["checkpoint"] or None)
        return self._surrogate

    def _targets(self, faces: np.ndarray) -> np.ndarray | None:
        if self.config["target"] == "away":
            return None
        if not hasattr(self, "_gallery_embeddings"):
            from .ksame import fit_gallery
            self._gallery_embeddings = self._model().embed(
                fit_gallery(self.config["gallery"], self.aligned_size))
        own = self._model().embed(faces)
        least_similar = np.argmin(own @ self._gallery_embeddings.T, axis=1)
        return self._gallery_embeddings[least_similar]

    def apply_batch(self, crops: list[FaceCrop], contexts: list[FaceContext]) -> list[np.ndarray]:
        if not crops:
            return []
        faces = np.stack([crop.pixels for crop in crops])
        masks = np.stack([crop.mask for crop in crops])
        c = self.config
        cloaked = pgd_identity_cloak(faces, self._model(), c["eps"], c["steps"],
                                     c["step_size"] or None, self._targets(faces), masks,
                                     c["augment"], contexts[0].rng)
        return list(cloaked)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        return self.apply_batch([crop], [context])[0]
