"""Classic pixel-level de-identification operators.

Implements §3.1 of the QM-VAE paper (Qiu et al., Appl. Sci. 2022; seed 000) — blindfold
(Eq. 1), mosaic (Eq. 2), Laplace noise (Eq. 3) — and the naive obfuscations of the book's
taxonomy (Wen et al. 2024, ch. 3: blurring, pixelation, masking, noise). All work on a
native-resolution box crop (``space = "box"``), so block sizes and kernel sizes are in image
pixels, and all are pure functions of the crop plus the per-face random generator.
"""
from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from ..alignment import FaceCrop
from .base import DeidMethod, FaceContext, Param
from .registry import register


def _face_side(crop: FaceCrop) -> float:
    return float(max(crop.box[2] - crop.box[0], crop.box[3] - crop.box[1], 1))


def eye_band_polygon(landmarks: np.ndarray, height: float, extend: float) -> np.ndarray:
    """Corners of the blindfold band: a rectangle along the line through both eye centres.

    Args:
        height: band height as a multiple of the inter-ocular distance.
        extend: how far the band reaches past each eye centre, same unit.
    """
    left, right = landmarks[0].astype(np.float64), landmarks[1].astype(np.float64)
    axis = right - left
    distance = float(np.hypot(*axis))
    if not np.isfinite(distance) or distance < 1e-6:
        raise ValueError("blindfold needs two distinct eye landmarks")
    along = axis / distance
    across = np.array([-along[1], along[0]])
    reach = along * extend * distance
    half = across * height * distance / 2
    return np.array([left - reach - half, right + reach - half,
                     right + reach + half, left - reach + half])


def eye_band_mask(shape: tuple[int, int], landmarks: np.ndarray, height: float,
                  extend: float) -> np.ndarray:
    """Boolean ``(h, w)`` mask of the eye band, T_eyes of Eq. 1."""
    mask = np.zeros(shape, np.uint8)
    corners = np.rint(eye_band_polygon(landmarks, height, extend) * 16).astype(np.int32)
    cv2.fillConvexPoly(mask, corners, 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


@register
class Blindfold(DeidMethod):
    """Eq. 1: x_ij = 0 for (i, j) in T_eyes, the band through both eyes; unchanged elsewhere."""

    name = "blindfold"
    summary = "black band over the eyes, located from landmarks (QM-VAE Eq. 1)"
    covers_region = False  # only the eye band changes: never used to cover a whole region
    reference = "Qiu et al. 2022, QM-VAE §3.1, Eq. (1)"
    weakness = ("keeps identity: dlib re-identified 20/20 CelebA faces at the default band and "
                "15/20 at height 1.0 (benchmarks/weak_params.py; rank-1 0.81 in docs/benchmarks.md)")
    # No parameter range makes a blindfold de-identify (measured above), so none declares one.
    params = (
        Param("height", float, 0.6, "band height, in inter-ocular distances", minimum=0.05, maximum=3),
        Param("extend", float, 0.6, "band reach beyond each eye centre, in inter-ocular distances",
              minimum=0, maximum=3),
        Param("value", int, 0, "grey level the band is set to (Eq. 1 uses 0)", minimum=0, maximum=255),
    )

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        out = crop.pixels.copy()
        band = eye_band_mask(out.shape[:2], crop.landmarks, self.config["height"], self.config["extend"])
        out[band] = self.config["value"]
        return out


def block_means(pixels: np.ndarray, block: int) -> np.ndarray:
    """Replace every ``block`` x ``block`` cell by its mean colour (g(x) of Eq. 2).

    Cells are anchored at the crop's top-left; partial cells at the border average only the
    pixels they contain.
    """
    height, width = pixels.shape[:2]
    rows, cols = np.arange(0, height, block), np.arange(0, width, block)
    sums = np.add.reduceat(np.add.reduceat(pixels.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, height)), np.diff(np.append(cols, width)))
    means = np.rint(sums / counts[..., None]).astype(np.uint8)
    return np.repeat(np.repeat(means, block, axis=0), block, axis=1)[:height, :width]


# Measured with benchmarks/weak_params.py (dlib, 20 CelebA test faces, face boxes ~118 px, and
# the same images enlarged 4x): faces re-identified at 12 / 16 / 20 / 24 blocks across the face:
# 0 / 3 / 10 / 16 of 20. The limit follows the block count, not the pixel size.
MOSAIC_MAX_CELLS = 16


@register
class Mosaic(DeidMethod):
    """Eq. 2: every pixel of the face region becomes the mean of its colour block.

    What hides identity is how many blocks span the face, not the block's pixel size: dlib
    re-identified 3 of 20 CelebA faces at 16 blocks across and 10 of 20 at 20, at native size and
    4x enlarged alike. A fixed ``block_size`` is therefore checked per face at apply time: a face
    wider than 16 blocks is refused (or, with ``allow_weak``, recorded in ``weak_reasons``).
    """

    name = "mosaic"
    summary = "colour blocks over the face, block_size pixels (QM-VAE Eq. 2)"
    reference = "Qiu et al. 2022, QM-VAE §3.1, Eq. (2)"
    params = (Param("block_size", int, 0,
                    "side of a colour block in image pixels; 0 = auto: face size / 12, at least 8 "
                    "(8 on a CelebA face, as in the paper; a fixed 8 would leave a 4K face readable). "
                    "De-identifies while the face spans at most 16 blocks (dlib re-identified 3/20 "
                    "CelebA faces at 16, 10/20 at 20; checked per face); 1 copies the face",
                    minimum=0, maximum=4096, safe_min=2, safe_values=(0,)),)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        side = _face_side(crop)
        block = self.config["block_size"] or max(8, round(side / 12))
        if side / block > MOSAIC_MAX_CELLS:
            self.flag_weak(f"mosaic block_size={block} leaves {side / block:.0f} blocks across a "
                           f"{side:.0f}-px face; it de-identifies up to {MOSAIC_MAX_CELLS} (use "
                           f"block_size=0 for auto, or >= {int(np.ceil(side / MOSAIC_MAX_CELLS))})",
                           key="block_size")
        return block_means(crop.pixels, block)


# Additive noise is averaged away when a recognizer shrinks a large face to its input size, so
# the noise a face needs grows with its pixel size. benchmarks/weak_params.py (dlib, 20 CelebA
# test faces) measured it: the same images enlarged 4x (face 467 px instead of 118) need 4x the
# noise for the same dlib distance (Gaussian sigma 80 at 467 px: median distance 0.31, sigma 20
# at 118 px: 0.31; Laplace lam 0.4 at 467 px: 0.41, lam 0.1 at 118 px: 0.41). Noise levels
# below are stated for a face of NOISE_REFERENCE_FACE_PX and scaled by face side / that above it.
NOISE_REFERENCE_FACE_PX = 118
# Laplace lam (on [0, 1] intensities) from which dlib rarely re-identifies a 118-px face
# (5/20 at 0.3, 15/20 at 0.2, 20/20 at 0.1), and below which the face is left nearly untouched
# (median dlib distance 0.27 at 0.05, 0.06 at 0.01: less than between two photos of one person).
LAPLACE_STRONG_LAM = 0.3
LAPLACE_FLOOR_LAM = 0.05
# The same for Gaussian noise std in grey levels (1/20 at 120, 12/20 at 80, 17/20 at 50;
# median distance 0.31 at 20, 0.09 at 5).
NOISE_STRONG_SIGMA = 120
NOISE_FLOOR_SIGMA = 20


def noise_needed(level_at_reference: float, face_side: float) -> float:
    """A noise level measured on a NOISE_REFERENCE_FACE_PX face, scaled to ``face_side``."""
    return level_at_reference * max(1.0, face_side / NOISE_REFERENCE_FACE_PX)


class _AdditiveNoise(DeidMethod):
    """Shared strength rules of the noise methods (see NOISE_REFERENCE_FACE_PX).

    Below the floor (scaled to the face) the face is left nearly untouched: refused unless
    ``allow_weak``. Between floor and strong level the method is weak by design: accepted and
    recorded in ``weak_reasons`` (the class ``weakness``).
    """

    level_name: ClassVar[str] = ""
    floor: ClassVar[float] = 0.0
    strong: ClassVar[float] = 0.0

    def known_weakness(self) -> str:
        return self.weakness if self.config[self.level_name] < self.strong else ""

    def check_face(self, crop: FaceCrop) -> None:
        side = _face_side(crop)
        level = self.config[self.level_name]
        floor, strong = noise_needed(self.floor, side), noise_needed(self.strong, side)
        if level < floor:
            self.flag_weak(f"{self.level_name}={level:g} leaves a {side:.0f}-px face nearly "
                           f"untouched (noise is averaged away on large faces; use >= {floor:.3g}, "
                           f"and >= {strong:.3g} to hide it)", key="face-size")
        elif level < strong and side > NOISE_REFERENCE_FACE_PX:
            self.note_weak(f"{self.level_name}={level:g} is too little noise to hide a {side:.0f}-px "
                           f"face (needs >= {strong:.3g})", key="face-size")


@register
class LaplaceNoise(_AdditiveNoise):
    """Eq. 3: add noise drawn from f(x) = exp(-|x - mu| / lambda) / (2 lambda).

    Scale: ``lam`` and ``mu`` act on intensities in [0, 1] (the result is clipped to that range),
    so on 8-bit pixels the noise is multiplied by 255. The paper's lambda = 1 read on this scale
    drowns the face (noise twice the full range); read on the 0–255 scale it is invisible —
    pass ``lam=0.0039`` for that reading (``allow_weak``). The default 0.1 (about 25 grey levels)
    is in between, and dlib still re-identifies every CelebA face at it.
    """

    name = "laplace"
    summary = "additive Laplace noise, lam and mu on the [0, 1] intensity scale (QM-VAE Eq. 3)"
    reference = "Qiu et al. 2022, QM-VAE §3.1, Eq. (3)"
    weakness = (f"keeps identity below lam {LAPLACE_STRONG_LAM:g} (more on faces over "
                f"{NOISE_REFERENCE_FACE_PX} px): dlib re-identified 20/20 CelebA faces at the "
                "default lam 0.1, 15/20 at 0.2, 5/20 at 0.3 (benchmarks/weak_params.py)")
    level_name, floor, strong = "lam", LAPLACE_FLOOR_LAM, LAPLACE_STRONG_LAM
    params = (
        Param("lam", float, 0.1, "Laplace scale lambda on [0, 1] intensities (x255 on 8-bit). "
              f"Hides a {NOISE_REFERENCE_FACE_PX}-px face from {LAPLACE_STRONG_LAM:g} (dlib: 5/20 "
              "CelebA faces re-identified at 0.3, 15/20 at 0.2, 20/20 at 0.1); below 0.05 the face "
              "is left nearly untouched (median dlib distance 0.27 at 0.05). Both limits grow "
              f"with the face above {NOISE_REFERENCE_FACE_PX} px (x4 at 4x the size; checked per face)",
              minimum=1e-6, maximum=100, safe_min=LAPLACE_FLOOR_LAM),
        Param("mu", float, 0.0, "Laplace location mu on [0, 1] intensities", minimum=-1, maximum=1),
    )

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        self.check_face(crop)
        noise = context.rng.laplace(self.config["mu"], self.config["lam"], crop.pixels.shape)
        return np.rint(np.clip(crop.pixels / 255.0 + noise, 0, 1) * 255).astype(np.uint8)


@register
class GaussianNoise(_AdditiveNoise):
    """Additive zero-mean Gaussian noise (book ch. 3, naive obfuscation)."""

    name = "gaussian_noise"
    summary = "additive Gaussian noise of std sigma grey levels"
    reference = "Wen et al. 2024, ch. 3 (naive methods: noise)"
    weakness = (f"keeps identity below sigma {NOISE_STRONG_SIGMA:g} (more on faces over "
                f"{NOISE_REFERENCE_FACE_PX} px): dlib re-identified 17/20 CelebA faces at the "
                "default sigma 50, 12/20 at 80, 1/20 at 120 (benchmarks/weak_params.py)")
    level_name, floor, strong = "sigma", NOISE_FLOOR_SIGMA, NOISE_STRONG_SIGMA
    params = (Param("sigma", float, 50.0, "noise standard deviation in 8-bit grey levels. Hides "
                    f"a {NOISE_REFERENCE_FACE_PX}-px face from {NOISE_STRONG_SIGMA:g} (dlib: 1/20 "
                    "CelebA faces re-identified at 120, 12/20 at 80, 17/20 at 50); below 20 the "
                    "face is left nearly untouched (median dlib distance 0.31 at 20, 0.09 at 5). "
                    f"Both limits grow with the face above {NOISE_REFERENCE_FACE_PX} px (checked "
                    "per face)", minimum=0, maximum=1000, safe_min=NOISE_FLOOR_SIGMA),)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        self.check_face(crop)
        noise = context.rng.normal(0.0, self.config["sigma"], crop.pixels.shape)
        return np.clip(crop.pixels + noise, 0, 255).round().astype(np.uint8)


def opencv_kernel_sigma(kernel: int) -> float:
    """The sigma ``cv2.GaussianBlur`` derives from an odd kernel side when given sigma 0."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def gaussian_blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels whose cost does not grow with sigma.

    A direct Gaussian costs O(sigma) per pixel (a half-face kernel made video blur 3x slower than
    mosaic). From 5 px on, the image is shrunk by an integer ``factor`` (area averaging), blurred
    there with a sigma of about 2.5 px, and enlarged again bilinearly. Area averaging and
    bilinear enlargement add about ``factor**2 / 4`` of variance, which is taken out of the
    low-resolution sigma, so the overall blur stays ``sigma``: on two CelebA faces pasted into a
    1280x720 frame the output differs from ``cv2.GaussianBlur`` by 0.2 grey levels on average,
    keeps the same high-frequency energy (mean |Laplacian| 2.04 vs 2.03, original 6.73) and the
    same dlib distance to the original (0.75/0.78 vs 0.74/0.77), at a tenth of the time
    (tests/test_param_safety.py checks both).

    Args:
        pixels: ``(h, w, 3) uint8``.
        sigma: standard deviation in pixels (> 0).
    """
    height, width = pixels.shape[:2]
    factor = int(sigma / 2.5)
    if factor < 2 or min(height, width) < 4 * factor:
        return cv2.GaussianBlur(pixels, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    small_size = (max(1, round(width / factor)), max(1, round(height / factor)))
    small = cv2.resize(pixels, small_size, interpolation=cv2.INTER_AREA)
    small_sigma = np.sqrt(max(sigma ** 2 - factor ** 2 / 4, 0.25)) / factor
    small = cv2.GaussianBlur(small, (0, 0), small_sigma, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


# Measured with benchmarks/weak_params.py (dlib, 20 CelebA test faces of ~118 px, and 4x
# enlarged): faces re-identified at sigma 0.05 / 0.04 / 0.03 x face side: 0 / 10 / 19 of 20,
# the same at both sizes.
BLUR_SAFE_SIGMA_FRACTION = 0.05


@register
class Blur(DeidMethod):
    """Gaussian blur of the face region (book ch. 3, naive obfuscation).

    Strength is relative to the face: a 15-px kernel hides a 60-px face and not a 600-px one.
    The default (kernel half the face side, sigma about 0.075 x face side) re-identified 0 of 20
    CelebA faces for dlib; re-identification (distance < 0.6) becomes common below a sigma of
    0.05 x face side (10/20 at 0.04), at native size and 4x enlarged alike. A fixed
    ``kernel_size``/``sigma`` is therefore checked against each face at apply time and refused
    (or, with ``allow_weak``, recorded) when the face is too large for it.
    """

    name = "blur"
    summary = "Gaussian blur; kernel scales with the face unless kernel_size is given"
    reference = "Wen et al. 2024, ch. 3 (naive methods: blurring)"
    params = (
        Param("kernel_size", int, 0, "odd kernel side in pixels; 0 = half the face size. Sets "
              "sigma as OpenCV does (0.3 (k/2 - 1.5) + 0.8); de-identifies while that sigma is "
              ">= 0.05 x the face side (checked per face; 3 is a no-op on any face)",
              minimum=0, maximum=4001, safe_min=5, safe_values=(0,)),
        Param("sigma", float, 0.0, "Gaussian sigma in pixels; 0 = derived from the kernel. "
              "De-identifies while >= 0.05 x the face side (checked per face)",
              minimum=0, maximum=1000, safe_min=1, safe_values=(0,)),
    )

    def validate(self) -> None:
        kernel = self.config["kernel_size"]
        if kernel and kernel % 2 == 0:
            self.config["kernel_size"] = kernel + 1  # OpenCV needs odd kernels

    def sigma_for(self, face_side: float) -> float:
        """The blur's standard deviation in pixels on a face ``face_side`` pixels across."""
        if self.config["sigma"]:
            return self.config["sigma"]
        kernel = self.config["kernel_size"] or (int(face_side / 2) | 1)
        return opencv_kernel_sigma(kernel)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        side = _face_side(crop)
        sigma = self.sigma_for(side)
        if sigma < BLUR_SAFE_SIGMA_FRACTION * side:
            self.flag_weak(f"blur sigma {sigma:.1f} px is too little for a {side:.0f}-px face (it "
                           f"needs >= {BLUR_SAFE_SIGMA_FRACTION:g} x the face side, "
                           f"{BLUR_SAFE_SIGMA_FRACTION * side:.1f} px); use kernel_size=0 (auto) or "
                           "a larger kernel_size/sigma", key="face-size")
        return gaussian_blur(crop.pixels, sigma)


@register
class Pixelate(DeidMethod):
    """Down-sample so the face spans ``size`` cells, then up-sample by pixel repetition."""

    name = "pixelate"
    summary = "down- then up-sampling: the face becomes size x size cells"
    reference = "Wen et al. 2024, ch. 3 (naive methods: pixelation)"
    params = (Param("size", int, 10, "cells across the face box (relative to the face, so the "
                    "limit holds at every face size). De-identifies up to 16 (dlib re-identified "
                    "1/20 CelebA faces at 16, 11/20 at 20, 16/20 at 24, 20/20 at 32)",
                    minimum=1, maximum=512, safe_max=16),)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        height, width = crop.pixels.shape[:2]
        factor = min(self.config["size"] / _face_side(crop), 1.0)
        small = cv2.resize(crop.pixels, (max(1, round(width * factor)), max(1, round(height * factor))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


@register
class SolidMask(DeidMethod):
    """Fill the face region with one colour (book ch. 3, masking)."""

    name = "mask"
    summary = "solid colour fill of the face region"
    reference = "Wen et al. 2024, ch. 3 (naive methods: masking)"
    params = (Param("color", tuple, (0, 0, 0), "fill colour as R,G,B (0-255 each)"),)

    def validate(self) -> None:
        color = self.config["color"]
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            from ..errors import InvalidParameterError
            raise InvalidParameterError(f"color must be three values 0-255, got {color}")

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        out = np.empty_like(crop.pixels)
        out[...] = np.array(self.config["color"], dtype=np.uint8)
        return out
