"""Differentially private obfuscation: DP-Pix and DP-Blur (book ch. 3.1.1 and 5.2.3).

**DP-Pix** (L. Fan, "Image pixelization with differential privacy", DBSec 2018, Alg. 1):
pixelate with b x b cells, then add Laplace noise to every cell mean. Two images are
*neighbours* when they differ in at most ``m`` pixels; a cell mean moves by at most
255 * m / b^2 when the m pixels fall in one cell, so the L1 sensitivity of the vector of cell
means is Δ1 = 255 * m / b^2 per channel, and Laplace noise of scale

    λ = Δ1 / ε = 255 * m / (b^2 * ε)                     (Fan 2018, Theorem 1)

makes the pixelated image ε-differentially private. Fan works on grey images; for RGB, a
changed pixel changes three channel means, so the sensitivity (and λ) is multiplied by the
channel count C = 3 (pass ``grayscale=true`` to obfuscate in grey, C = 1, as in the paper).

**DP-Blur** (L. Fan, "Differential privacy for image publication", TPDP 2019): pixelate, add
*Gaussian* noise to the cell means, up-sample back to the original size, Gaussian-blur. The
Gaussian mechanism needs the L2 sensitivity: putting the m changed pixels into as few cells as
possible maximises it, giving Δ2 = 255 * sqrt(q + (r / b^2)^2) * sqrt(C) with m = q b^2 + r.
σ comes from either

* ``mechanism="classic"``: σ = Δ2 * sqrt(2 ln(1.25 / δ)) / ε (Dwork & Roth 2014, Thm. A.1;
  valid only for ε < 1), or
* ``mechanism="analytic"`` (default): the smallest σ with
  Φ(Δ2/(2σ) - εσ/Δ2) - e^ε Φ(-Δ2/(2σ) - εσ/Δ2) <= δ (Balle & Wang, ICML 2018, Thm. 8), valid for
  every ε > 0 and never larger than the classic σ.

Parameters (both methods): ``eps`` the privacy budget ε (> 0; smaller = more noise), ``b`` the
cell side in image pixels, ``m`` the number of pixels a neighbouring image may differ in (the
size of the secret being protected), DP-Blur also ``delta`` (δ, the failure probability, < 1/n)
and ``blur_sigma``. Clipping to [0, 255] and rounding happen after the noise (post-processing
keeps the guarantee). The guarantee covers the face box the method is applied to, not the
whole photo: pixels outside it are published as they are.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..alignment import FaceCrop
from ..errors import InvalidParameterError
from .base import DeidMethod, FaceContext, Param, require_positive
from .classic import (LAPLACE_STRONG_LAM, MOSAIC_MAX_CELLS, NOISE_STRONG_SIGMA, _face_side,
                      noise_needed)
from .registry import register


def _check(eps: float, b: int, m: int) -> None:
    if not np.isfinite(eps) or eps <= 0:
        raise InvalidParameterError(f"eps (the privacy budget ε) must be > 0, got {eps}")
    if int(b) != b or b < 1:
        raise InvalidParameterError(f"b (the cell side in pixels) must be an integer >= 1, got {b}")
    if int(m) != m or m < 1:
        raise InvalidParameterError(f"m (pixels that may differ) must be an integer >= 1, got {m}")


def laplace_scale(eps: float, b: int, m: int, channels: int = 1) -> float:
    """DP-Pix Laplace scale λ = 255 m C / (b² ε) in grey levels (Fan 2018, Thm. 1)."""
    _check(eps, b, m)
    return 255.0 * m * channels / (b * b * eps)


def l2_sensitivity(b: int, m: int, channels: int = 1) -> float:
    """Largest L2 change of the cell-mean vector when ``m`` pixels change by up to 255."""
    full_cells, rest = divmod(int(m), int(b) * int(b))
    return 255.0 * math.sqrt(full_cells + (rest / (b * b)) ** 2) * math.sqrt(channels)


def gaussian_sigma(eps: float, delta: float, sensitivity: float, mechanism: str = "analytic") -> float:
    """σ of the (ε, δ) Gaussian mechanism for L2 ``sensitivity`` (see the module docstring)."""
    if not np.isfinite(eps) or eps <= 0:
        raise InvalidParameterError(f"eps (the privacy budget ε) must be > 0, got {eps}")
    if not 0 < delta < 1:
        raise InvalidParameterError(f"delta must lie in (0, 1), got {delta}")
    if mechanism == "classic":
        if eps >= 1:
            raise InvalidParameterError(
                f"the classic Gaussian mechanism is proven only for eps < 1 (got {eps}); "
                "use mechanism='analytic'")
        return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / eps
    if mechanism != "analytic":
        raise InvalidParameterError(f"mechanism must be 'analytic' or 'classic', got {mechanism!r}")
    from scipy.stats import norm

    def failure(sigma: float) -> float:  # Balle & Wang 2018, Theorem 8
        a, c = sensitivity / (2 * sigma), eps * sigma / sensitivity
        # e^ε Φ(-a - c) computed in log space so large ε does not overflow
        return norm.cdf(a - c) - math.exp(eps + norm.logcdf(-a - c))

    low, high = 1e-6 * sensitivity, sensitivity
    while failure(high) > delta:
        high *= 2
    for _ in range(200):  # bisection on the monotone failure probability
        middle = (low + high) / 2
        low, high = (low, middle) if failure(middle) <= delta else (middle, high)
    return high


def cell_means(pixels: np.ndarray, b: int) -> np.ndarray:
    """``(H, W, C)`` -> ``(ceil(H/b), ceil(W/b), C)`` float64 means of b x b cells (border
    cells average the pixels they hold)."""
    height, width = pixels.shape[:2]
    rows, cols = np.arange(0, height, b), np.arange(0, width, b)
    sums = np.add.reduceat(np.add.reduceat(pixels.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, height)), np.diff(np.append(cols, width)))
    return sums / counts[..., None]


def _expand(cells: np.ndarray, b: int, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(cells, b, axis=0), b, axis=1)[:shape[0], :shape[1]]


def dp_pix_noisy_cells(pixels: np.ndarray, b: int, eps: float, m: int,
                       rng: np.random.Generator) -> np.ndarray:
    """DP-Pix before post-processing: cell means + Laplace(λ) noise, float, not clipped.

    Args:
        pixels: ``(H, W, C)`` image (uint8 or float, 0–255 scale).
    Returns:
        ``(ceil(H/b), ceil(W/b), C)`` float64 noisy cell means.
    """
    means = cell_means(pixels, b)
    scale = laplace_scale(eps, b, m, channels=pixels.shape[2])
    return means + rng.laplace(0.0, scale, means.shape)


def dp_pix(pixels: np.ndarray, b: int, eps: float, m: int, rng: np.random.Generator) -> np.ndarray:
    """DP-Pix: ``(H, W, C)`` uint8 -> same shape uint8, ε-DP for m-pixel neighbours."""
    noisy = dp_pix_noisy_cells(pixels, b, eps, m, rng)
    return _expand(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), b, pixels.shape[:2])


def dp_blur_noisy_cells(pixels: np.ndarray, b: int, eps: float, m: int, delta: float,
                        rng: np.random.Generator, mechanism: str = "analytic") -> tuple[np.ndarray, float]:
    """DP-Blur's private release: cell means + N(0, σ²) noise; returns (cells, σ)."""
    _check(eps, b, m)
    means = cell_means(pixels, b)
    sigma = gaussian_sigma(eps, delta, l2_sensitivity(b, m, pixels.shape[2]), mechanism)
    return means + rng.normal(0.0, sigma, means.shape), sigma


def dp_blur(pixels: np.ndarray, b: int, eps: float, m: int, delta: float, blur_sigma: float,
            rng: np.random.Generator, mechanism: str = "analytic") -> np.ndarray:
    """DP-Blur: private cells, up-sampled (bilinear) and Gaussian-blurred; ``(H, W, C)`` uint8."""
    noisy, _ = dp_blur_noisy_cells(pixels, b, eps, m, delta, rng, mechanism)
    height, width = pixels.shape[:2]
    clipped = np.clip(noisy, 0, 255).astype(np.float32)
    # Up-sample the cell grid to its full pixel extent, then crop to the image.
    grid_h, grid_w = clipped.shape[:2]
    upsampled = cv2.resize(clipped, (grid_w * b, grid_h * b), interpolation=cv2.INTER_LINEAR)
    upsampled = upsampled.reshape(grid_h * b, grid_w * b, -1)[:height, :width]
    if blur_sigma > 0:
        upsampled = cv2.GaussianBlur(upsampled, (0, 0), blur_sigma, borderType=cv2.BORDER_REFLECT)
        upsampled = upsampled.reshape(height, width, -1)
    return np.clip(np.rint(upsampled), 0, 255).astype(np.uint8)


def _as_channels(pixels: np.ndarray, grayscale: bool) -> np.ndarray:
    if not grayscale:
        return pixels
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)[..., None]


def _to_rgb(result: np.ndarray) -> np.ndarray:
    return np.repeat(result, 3, axis=2) if result.shape[2] == 1 else result


_COMMON = (
    Param("eps", float, 0.5, "privacy budget ε (> 0); smaller = stronger privacy, more noise. "
          "No range of its own: with b it sets the noise, and the method is refused (unless "
          "allow_weak) when the noise is below what hides a face while the cells are too "
          "small to (see DPPix / DPBlur)", minimum=1e-9),
    Param("b", int, 16, "cell side in image pixels; the cells alone de-identify while the face "
          "spans at most 16 of them (as mosaic; checked per face). b=1 keeps every pixel, so "
          "only the noise protects", minimum=1, maximum=512),
    Param("m", int, 16, "pixels a neighbouring image may differ in (the protected secret)",
          minimum=1, maximum=1_000_000),
    Param("grayscale", bool, False, "obfuscate the grey image (Fan's setting, C = 1) instead of RGB "
          "(C = 3, three times the noise)"),
)


class _DPMethod(DeidMethod):
    """Shared strength check: DP-Pix / DP-Blur hide a face by their cells *or* by their noise.

    The cells are a mosaic of b-pixel blocks, which de-identifies while the face spans at most
    ``MOSAIC_MAX_CELLS`` (16) of them; the noise alone de-identifies from the strength that
    plain noise needs on a 118-px face (Laplace scale 0.3 x 255 grey levels, Gaussian sigma 120:
    see :mod:`facedeid.methods.classic`), grown in proportion once the face spans more than 118
    *cells* (a recognizer shrinking the face averages independent cells, not pixels of one
    cell; derived from the measured linear growth of plain noise, not measured for DP itself).
    A setting that has neither — ``eps=1e9, b=1`` is the untouched face — is weak: with b = 1 at
    construction, otherwise for the first face that spans more than 16 cells.
    """

    space = "box"

    def __init__(self, **params):
        # eps <= 0 must fail with a sentence about ε, not a generic range message
        require_positive(params, "eps", "the privacy budget ε")
        super().__init__(**params)

    def noise_scale(self) -> float:
        """The noise's scale in grey levels (Laplace λ or Gaussian σ) for these settings."""
        raise NotImplementedError

    def strong_noise(self, cells_across: float) -> float:
        """Noise scale (grey levels) that hides a face ``cells_across`` cells wide."""
        raise NotImplementedError

    def noise_hides_face(self, cells_across: float = 0.0) -> bool:
        return self.noise_scale() >= self.strong_noise(cells_across)

    def _noise_words(self, cells_across: float = 0.0) -> str:
        return (f"{self.noise_kind} {self.noise_scale():.1f} grey levels (a face needs "
                f"{self.strong_noise(cells_across):.0f})")

    def validate(self) -> None:
        if self.config["b"] == 1 and not self.noise_hides_face():
            self.flag_weak(f"b=1 keeps every pixel and eps={self.config['eps']:g} gives noise of "
                           f"only {self._noise_words()}, so nothing hides the face; use b >= 2 "
                           "sized for the face, or a smaller eps", key="strength")

    def check_face(self, crop: FaceCrop) -> None:
        side = _face_side(crop)
        cells = side / self.config["b"]
        if cells > MOSAIC_MAX_CELLS and not self.noise_hides_face(cells):
            self.flag_weak(f"b={self.config['b']} leaves {cells:.0f} cells across a {side:.0f}-px "
                           f"face (cells hide it up to {MOSAIC_MAX_CELLS}) and eps="
                           f"{self.config['eps']:g} gives noise of only {self._noise_words(cells)}; use "
                           f"b >= {int(np.ceil(side / MOSAIC_MAX_CELLS))} or a smaller eps",
                           key="strength")


@register
class DPPix(_DPMethod):
    """DP-Pix (Fan 2018): pixelate, add Laplace noise of scale 255·m·C/(b²·ε) to each cell."""

    name = "dp_pix"
    summary = "ε-differentially private pixelation (Fan 2018): b-pixel cells + Laplace noise"
    reference = "L. Fan, Image pixelization with differential privacy, DBSec 2018, Alg. 1, Thm. 1"
    params = _COMMON

    def noise_scale(self) -> float:
        c = self.config
        return laplace_scale(c["eps"], c["b"], c["m"], channels=1 if c["grayscale"] else 3)

    noise_kind = "Laplace scale"

    def strong_noise(self, cells_across: float) -> float:
        return noise_needed(LAPLACE_STRONG_LAM * 255, cells_across)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        self.check_face(crop)
        c = self.config
        pixels = _as_channels(crop.pixels, c["grayscale"])
        return _to_rgb(dp_pix(pixels, c["b"], c["eps"], c["m"], context.rng))


@register
class DPBlur(_DPMethod):
    """DP-Blur (Fan 2019): pixelate, Gaussian (ε, δ)-DP noise, up-sample, Gaussian blur."""

    name = "dp_blur"
    summary = "(ε, δ)-differentially private blur (Fan 2019): cells + Gaussian noise, blurred"
    reference = ("L. Fan, Differential privacy for image publication, TPDP 2019; σ: Balle & "
                 "Wang ICML 2018 Thm. 8 (analytic) or Dwork & Roth 2014 Thm. A.1 (classic)")
    params = _COMMON + (
        Param("delta", float, 1e-5, "δ of (ε, δ)-DP", minimum=1e-12, maximum=0.5),
        Param("blur_sigma", float, 0.0, "Gaussian blur σ in pixels after up-sampling; 0 = b / 2",
              minimum=0, maximum=500),
        Param("mechanism", str, "analytic", "how σ is calibrated", choices=("analytic", "classic")),
    )

    def validate(self) -> None:
        c = self.config
        if c["mechanism"] == "classic" and c["eps"] >= 1:
            raise InvalidParameterError("mechanism=classic is proven only for eps < 1; "
                                        "use mechanism=analytic")
        super().validate()

    def noise_scale(self) -> float:
        c = self.config
        channels = 1 if c["grayscale"] else 3
        return gaussian_sigma(c["eps"], c["delta"], l2_sensitivity(c["b"], c["m"], channels),
                              c["mechanism"])

    noise_kind = "Gaussian sigma"

    def strong_noise(self, cells_across: float) -> float:
        return noise_needed(NOISE_STRONG_SIGMA, cells_across)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        self.check_face(crop)
        c = self.config
        pixels = _as_channels(crop.pixels, c["grayscale"])
        blur = c["blur_sigma"] or c["b"] / 2
        return _to_rgb(dp_blur(pixels, c["b"], c["eps"], c["m"], c["delta"], blur, context.rng,
                               c["mechanism"]))
