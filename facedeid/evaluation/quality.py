"""Image-quality metrics between an original and its de-identified version.

MSE and PSNR (book Eq. 3.3) and SSIM (Eq. 3.4, scikit-image's implementation) on the whole image
and on the face region. FID and LPIPS (book §3.3.2.1) need pretrained backbones that cannot be
obtained offline, so they run only against weight files the user supplies
(:class:`TorchFeatureExtractor`, :class:`UserLPIPS`) and fail with a clear error otherwise.
:func:`embedding_frechet_distance` is the offline stand-in: the Fréchet distance of FID computed
in a face-recognizer's embedding space — named for what it is, not called FID.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MissingWeightsError


def face_window(box: np.ndarray, shape: tuple[int, ...], expand: float = 1.0) -> tuple[slice, slice]:
    """Integer row/column slices of ``box`` scaled by ``expand``, clipped to the image."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
    height, width = shape[:2]
    left, right = int(max(np.floor(cx - hw), 0)), int(min(np.ceil(cx + hw), width))
    top, bottom = int(max(np.floor(cy - hh), 0)), int(min(np.ceil(cy + hh), height))
    if right <= left or bottom <= top:
        raise ValueError(f"face box {list(box)} lies outside the image")
    return slice(top, bottom), slice(left, right)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over all pixels and channels, on the 0-255 scale."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(diff * diff))


def psnr(a: np.ndarray, b: np.ndarray, max_value: float = 255.0) -> float:
    """Book Eq. 3.3, in dB; ``inf`` for identical images."""
    error = mse(a, b)
    return float("inf") if error == 0 else float(10.0 * np.log10(max_value ** 2 / error))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Book Eq. 3.4 (α = β = γ = 1) via scikit-image, over colour channels, on 0-255 values."""
    from skimage.metrics import structural_similarity

    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    side = min(a.shape[:2])
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        return float("nan")
    return float(structural_similarity(a, b, channel_axis=2 if a.ndim == 3 else None,
                                       data_range=255, win_size=window))


def image_quality(original: np.ndarray, anonymized: np.ndarray, box: np.ndarray) -> dict[str, float]:
    """MSE / PSNR / SSIM on the whole image and inside the face box."""
    rows, cols = face_window(box, original.shape)
    face_a, face_b = original[rows, cols], anonymized[rows, cols]
    return {"mse": mse(original, anonymized), "psnr": psnr(original, anonymized),
            "ssim": ssim(original, anonymized), "face_mse": mse(face_a, face_b),
            "face_psnr": psnr(face_a, face_b), "face_ssim": ssim(face_a, face_b)}


# -- Fréchet distances -------------------------------------------------------------------------
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between two Gaussians (FID's formula).

    ``Tr((S1 S2)^{1/2})`` is computed as the sum of square roots of the eigenvalues of the
    symmetric ``S1^{1/2} S2 S1^{1/2}`` (same spectrum), with ``eigh`` — exact for covariance
    matrices and far faster than a general ``scipy.linalg.sqrtm``.
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


def features_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two ``(N, D)`` feature sets (N >= 2 each)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def embedding_frechet_distance(original_embeddings: np.ndarray,
                               anonymized_embeddings: np.ndarray) -> float:
    """Offline FID stand-in: Fréchet distance in a face recognizer's embedding space.

    It says how far the *identity-feature distribution* of the outputs moved from that of the
    originals — not image realism as Inception-FID does. Report it under its own name.
    """
    return features_frechet_distance(original_embeddings, anonymized_embeddings)


# -- user-supplied backbones -------------------------------------------------------------------
def _require_file(path: str | os.PathLike | None, what: str, flag: str) -> Path:
    if path is None:
        raise MissingWeightsError(f"{what} needs pretrained weights that facedeid cannot ship or "
                                  f"download; pass a file you have with {flag}")
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{what}: weight file {path} not found (given with {flag})")
    return path


class TorchFeatureExtractor:
    """An Inception-like feature extractor the user supplies, for a true FID.

    Accepts a TorchScript file (``.pt``/``.pth``, ``module(x) -> (N, D)``) or an ONNX file.
    Input: ``(N, 3, size, size)`` float32 RGB scaled to ``[0, 1]`` unless ``normalize=(mean, std)``.
    """

    def __init__(self, path: str | os.PathLike | None, size: int = 299,
                 normalize: tuple[float, float] | None = None):
        self.path = _require_file(path, "FID", "--fid-weights")
        self.size, self.normalize = int(size), normalize
        if self.path.suffix.lower() == ".onnx":
            import onnxruntime as ort
            self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            self._module = None
        else:
            import torch
            try:
                self._module = torch.jit.load(str(self.path), map_location="cpu").eval()
            except Exception as error:  # noqa: BLE001 - torch raises many types here
                raise MissingWeightsError(f"{self.path}: not a TorchScript module ({error}); "
                                          "export one with torch.jit.save") from None
            self._session = None

    def _batch(self, images: list[np.ndarray]) -> np.ndarray:
        import cv2
        batch = np.stack([cv2.resize(im, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
                          for im in images]).astype(np.float32) / 255.0
        if self.normalize is not None:
            batch = (batch - self.normalize[0]) / self.normalize[1]
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def features(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """``(N, D) float32`` features of ``(H, W, 3) uint8`` RGB images."""
        rows = []
        for start in range(0, len(images), batch_size):
            batch = self._batch(images[start:start + batch_size])
            if self._session is not None:
                name = self._session.get_inputs()[0].name
                out = self._session.run(None, {name: batch})[0]
            else:
                import torch
                with torch.no_grad():
                    out = self._module(torch.from_numpy(batch)).cpu().numpy()
            rows.append(np.asarray(out, np.float32).reshape(len(batch), -1))
        return np.concatenate(rows)

    def fid(self, originals: list[np.ndarray], anonymized: list[np.ndarray]) -> float:
        return features_frechet_distance(self.features(originals), self.features(anonymized))


class UserLPIPS:
    """LPIPS from a TorchScript file the user supplies: ``module(x, y) -> (N,)`` or ``(N,1,1,1)``,
    inputs ``(N, 3, H, W)`` in ``[-1, 1]`` (the convention of the reference implementation)."""

    def __init__(self, path: str | os.PathLike | None, size: int = 64):
        import torch
        self.path = _require_file(path, "LPIPS", "--lpips-weights")
        self.size = int(size)
        try:
            self._module = torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as error:  # noqa: BLE001
            raise MissingWeightsError(f"{self.path}: not a TorchScript LPIPS module ({error})") from None

    def distance(self, originals: list[np.ndarray], anonymized: list[np.ndarray]) -> np.ndarray:
        import cv2
        import torch

        def tensor(images):
            batch = np.stack([cv2.resize(im, (self.size, self.size)) for im in images])
            return torch.from_numpy(batch.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)

        with torch.no_grad():
            out = self._module(tensor(originals), tensor(anonymized))
        return out.reshape(len(originals)).cpu().numpy().astype(np.float64)
