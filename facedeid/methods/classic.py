"""Classic pixel-level de-identification operators.

Implements §3.1 of the QM-VAE paper (Qiu et al., Appl. Sci. 2022; seed 000) — blindfold
(Eq. 1), mosaic (Eq. 2), Laplace noise (Eq. 3) — and the naive obfuscations of the book's
taxonomy (Wen et al. 2024, ch. 3: blurring, pixelation, masking, noise). All work on a
native-resolution box crop (``space = "box"``), so block sizes and kernel sizes are in image
pixels, and all are pure functions of the crop plus the per-face random generator.
"""
from __future__ import annotations

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
    reference = "Qiu et al. 2022, QM-VAE §3.1, Eq. (1)"
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


@register
class Mosaic(DeidMethod):
    """Eq. 2: every pixel of the face region becomes the mean of its colour block."""

    name = "mosaic"
    summary = "colour blocks over the face, block_size pixels (QM-VAE Eq. 2)"
    reference = "Qiu et al. 2022, QM-VAE §3.1, Eq. (2)"
    params = (Param("block_size", int, 0,
                    "side of a colour block in image pixels; 0 = auto: face size / 12, at least 8 "
                    "(8 on a CelebA face, as in the paper; a fixed 8 would leave a 4K face readable)",
                    minimum=0, maximum=4096),)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        block = self.config["block_size"] or max(8, round(_face_side(crop) / 12))
        return block_means(crop.pixels, block)


@register
class LaplaceNoise(DeidMethod):
    """Eq. 3: add noise drawn from f(x) = exp(-|x - mu| / lambda) / (2 lambda).

    Scale: ``lam`` and ``mu`` act on intensities in [0, 1] (the result is clipped to that range),
    so on 8-bit pixels the noise is multiplied by 255. The paper's lambda = 1 read on this scale
    drowns the face (noise twice the full range); read on the 0–255 scale it is invisible —
    pass ``lam=0.0039`` for that reading. The default 0.1 (about 25 grey levels) is in between.
    """

    name = "laplace"
    summary = "additive Laplace noise, lam and mu on the [0, 1] intensity scale (QM-VAE Eq. 3)"
    reference = "Qiu et al. 2022, QM-VAE §3.1, Eq. (3)"
    params = (
        Param("lam", float, 0.1, "Laplace scale lambda on [0, 1] intensities (x255 on 8-bit)",
              minimum=1e-6, maximum=100),
        Param("mu", float, 0.0, "Laplace location mu on [0, 1] intensities", minimum=-1, maximum=1),
    )

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        noise = context.rng.laplace(self.config["mu"], self.config["lam"], crop.pixels.shape)
        return np.rint(np.clip(crop.pixels / 255.0 + noise, 0, 1) * 255).astype(np.uint8)


@register
class GaussianNoise(DeidMethod):
    """Additive zero-mean Gaussian noise (book ch. 3, naive obfuscation)."""

    name = "gaussian_noise"
    summary = "additive Gaussian noise of std sigma grey levels"
    reference = "Wen et al. 2024, ch. 3 (naive methods: noise)"
    params = (Param("sigma", float, 50.0, "noise standard deviation in 8-bit grey levels",
                    minimum=0, maximum=1000),)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        noise = context.rng.normal(0.0, self.config["sigma"], crop.pixels.shape)
        return np.clip(crop.pixels + noise, 0, 255).round().astype(np.uint8)


@register
class Blur(DeidMethod):
    """Gaussian blur of the face region (book ch. 3, naive obfuscation)."""

    name = "blur"
    summary = "Gaussian blur; kernel scales with the face unless kernel_size is given"
    reference = "Wen et al. 2024, ch. 3 (naive methods: blurring)"
    params = (
        Param("kernel_size", int, 0, "odd kernel side in pixels; 0 = half the face size",
              minimum=0, maximum=4001),
        Param("sigma", float, 0.0, "Gaussian sigma in pixels; 0 = derived from the kernel",
              minimum=0, maximum=1000),
    )

    def validate(self) -> None:
        kernel = self.config["kernel_size"]
        if kernel and kernel % 2 == 0:
            self.config["kernel_size"] = kernel + 1  # OpenCV needs odd kernels

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        kernel = self.config["kernel_size"] or (int(_face_side(crop) / 2) | 1)
        return cv2.GaussianBlur(crop.pixels, (kernel, kernel), self.config["sigma"],
                                borderType=cv2.BORDER_REFLECT)


@register
class Pixelate(DeidMethod):
    """Down-sample so the face spans ``size`` cells, then up-sample by pixel repetition."""

    name = "pixelate"
    summary = "down- then up-sampling: the face becomes size x size cells"
    reference = "Wen et al. 2024, ch. 3 (naive methods: pixelation)"
    params = (Param("size", int, 10, "cells across the face box", minimum=1, maximum=512),)

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
