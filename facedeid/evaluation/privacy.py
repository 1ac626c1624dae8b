"""Privacy metrics on identity embeddings — pure numpy, arrays in, numbers out.

Definitions follow the book's §3.3.1 (Wen et al., *Face De-identification*, Springer 2024;
seed 002) and the protocols of the seeds:

* **Identity distance** (book Eq. 3.1): ``Id-dis = Dis(e(X), e(F(X)))`` between an original and
  its de-identified version, with ``Dis`` the L2 distance or the cosine distance
  ``1 - cos(a, b)`` (so larger always means "more different").
* **Successful de-identification rate** (book Eq. 3.2):
  ``SDR = 1 - (1/N) Σ f_ver(X, F(X))`` with ``f_ver = 0`` when ``Id-dis > τ`` and 1 otherwise,
  i.e. the fraction of pairs whose distance *exceeds* the recognizer's threshold τ.
* **Rank-1 identification**: a probe is identified when its nearest gallery embedding has its
  identity. EEAE (Liu et al., seed 004, §IV) uses the original test images as the gallery, the
  probe's own original included; with other photos of the same people as the gallery it is a
  linking attack.
* **Verification TAR at fixed FAR**: the distance threshold that accepts a fraction ``FAR`` of
  impostor pairs, and the fraction of genuine pairs it accepts.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("euclidean", "cosine")


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {a.shape}")
    return a


def _normalise(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def identity_distance(originals: np.ndarray, anonymized: np.ndarray,
                      metric: str = "euclidean") -> np.ndarray:
    """Book Eq. 3.1 for each pair: ``(N,)`` distance between row i of both ``(N, D)`` arrays."""
    a, b = _rows(originals), _rows(anonymized)
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {a.shape} vs {b.shape}")
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    if metric == "cosine":
        return 1.0 - np.sum(_normalise(a) * _normalise(b), axis=1)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def pairwise_distance(a: np.ndarray, b: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """``(N, M)`` distances between every row of ``a`` ``(N, D)`` and of ``b`` ``(M, D)``."""
    a, b = _rows(a), _rows(b)
    if metric == "euclidean":
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(squared, 0.0))
    if metric == "cosine":
        return 1.0 - _normalise(a) @ _normalise(b).T
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def successful_deidentification_rate(distances: np.ndarray, tau: float) -> float:
    """Book Eq. 3.2: fraction of de-identified faces whose identity distance exceeds ``tau``."""
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    if distances.size == 0:
        return float("nan")
    return float(np.mean(distances > tau))


def rank1_identification_rate(probes: np.ndarray, probe_ids: Sequence, gallery: np.ndarray,
                              gallery_ids: Sequence, metric: str = "euclidean") -> float:
    """Fraction of probes whose nearest gallery embedding carries the probe's identity.

    Probes whose identity has no gallery entry are excluded first (they cannot be identified
    by construction; :func:`identifiable_mask` tells how many there are). Lower is more private.
    """
    hits = rank1_hits(probes, probe_ids, gallery, gallery_ids, metric)
    return float(hits.mean()) if hits.size else float("nan")


def identifiable_mask(probe_ids: Sequence, gallery_ids: Sequence) -> np.ndarray:
    """``(N,)`` bool: probes whose identity appears in the gallery."""
    known = set(gallery_ids)
    return np.array([pid in known for pid in probe_ids], dtype=bool)


def rank1_hits(probes: np.ndarray, probe_ids: Sequence, gallery: np.ndarray,
               gallery_ids: Sequence, metric: str = "euclidean") -> np.ndarray:
    """Per identifiable probe: ``True`` when its nearest gallery entry has the same identity."""
    probes, gallery = _rows(probes), _rows(gallery)
    probe_ids, gallery_ids = np.asarray(probe_ids, dtype=object), np.asarray(gallery_ids, dtype=object)
    if len(probe_ids) != len(probes) or len(gallery_ids) != len(gallery):
        raise ValueError("one identity per embedding is needed")
    keep = identifiable_mask(probe_ids, gallery_ids)
    if not keep.any() or len(gallery) == 0:
        return np.zeros(0, dtype=bool)
    nearest = pairwise_distance(probes[keep], gallery, metric).argmin(axis=1)
    return gallery_ids[nearest] == probe_ids[keep]


def genuine_impostor_distances(probes: np.ndarray, probe_ids: Sequence, gallery: np.ndarray,
                               gallery_ids: Sequence, metric: str = "euclidean",
                               exclude_same_index: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All probe × gallery distances split into same-identity and different-identity pairs.

    Args:
        exclude_same_index: drop the diagonal (when probes and gallery are the same list).
    """
    distances = pairwise_distance(probes, gallery, metric)
    same = np.asarray(probe_ids, dtype=object)[:, None] == np.asarray(gallery_ids, dtype=object)[None, :]
    valid = np.ones_like(same, dtype=bool)
    if exclude_same_index:
        if distances.shape[0] != distances.shape[1]:
            raise ValueError("exclude_same_index needs probes and gallery of the same length")
        np.fill_diagonal(valid, False)
    return distances[same & valid], distances[~same & valid]


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Largest distance threshold accepting (``distance <= t``) at most ``far`` of impostors."""
    impostor = np.sort(np.asarray(impostor, dtype=np.float64).reshape(-1))
    if impostor.size == 0:
        raise ValueError("no impostor pairs to set a threshold from")
    if not 0.0 < far < 1.0:
        raise ValueError("far must lie in (0, 1)")
    allowed = int(np.floor(far * impostor.size))  # impostor pairs that may be accepted
    if allowed == 0:
        return float(np.nextafter(impostor[0], -np.inf))
    # accept the `allowed` closest impostors, stop strictly below the next one
    return float(impostor[allowed - 1]) if impostor[allowed] > impostor[allowed - 1] \
        else float(np.nextafter(impostor[allowed - 1], -np.inf))


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """``(TAR, threshold)``: genuine pairs accepted at the threshold giving FAR <= ``far``."""
    genuine = np.asarray(genuine, dtype=np.float64).reshape(-1)
    threshold = threshold_at_far(impostor, far)
    tar = float(np.mean(genuine <= threshold)) if genuine.size else float("nan")
    return tar, threshold
