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


def successful_deidentification_rate(distances: np.ndarray, tau: float,
                                     unprotected: np.ndarray | None = None) -> float:
    """Book Eq. 3.2: fraction of de-identified faces whose identity distance exceeds ``tau``.

    ``unprotected`` (``(N,)`` bool) marks faces the method failed on: they stay in the
    denominator and never count as de-identified, whatever their distance.
    """
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    if distances.size == 0:
        return float("nan")
    success = distances > tau
    if unprotected is not None:
        success &= ~np.asarray(unprotected, dtype=bool).reshape(-1)
    return float(np.mean(success))


def rank1_identification_rate(probes: np.ndarray, probe_ids: Sequence, gallery: np.ndarray,
                              gallery_ids: Sequence, metric: str = "euclidean", *,
                              probe_keys: Sequence | None = None,
                              gallery_keys: Sequence | None = None,
                              unprotected: np.ndarray | None = None) -> float:
    """Fraction of probes whose nearest gallery embedding carries the probe's identity.

    Probes whose identity has no gallery entry are excluded first (they cannot be identified
    by construction; :func:`identifiable_mask` tells how many there are). Lower is more private.
    Keyword arguments as in :func:`rank1_hits`.
    """
    hits = rank1_hits(probes, probe_ids, gallery, gallery_ids, metric, probe_keys=probe_keys,
                      gallery_keys=gallery_keys, unprotected=unprotected)
    return float(hits.mean()) if hits.size else float("nan")


def identifiable_mask(probe_ids: Sequence, gallery_ids: Sequence,
                      probe_keys: Sequence | None = None,
                      gallery_keys: Sequence | None = None) -> np.ndarray:
    """``(N,)`` bool: probes whose identity appears in the gallery (other than as themselves).

    With keys, a gallery entry whose key equals the probe's (the same photo) does not count.
    """
    if probe_keys is None or gallery_keys is None:
        known = set(gallery_ids)
        return np.array([pid in known for pid in probe_ids], dtype=bool)
    return _allowed_same_identity(probe_ids, gallery_ids, probe_keys, gallery_keys).any(axis=1)


def _allowed_pairs(probe_keys: Sequence | None, gallery_keys: Sequence | None,
                   shape: tuple[int, int]) -> np.ndarray:
    """``(N, M)`` bool: pairs that may be matched (never a photo with itself)."""
    if probe_keys is None or gallery_keys is None:
        return np.ones(shape, dtype=bool)
    probe_keys = np.asarray(probe_keys, dtype=object)
    gallery_keys = np.asarray(gallery_keys, dtype=object)
    if probe_keys.shape != (shape[0],) or gallery_keys.shape != (shape[1],):
        raise ValueError("one key per probe and per gallery entry is needed")
    return probe_keys[:, None] != gallery_keys[None, :]


def _allowed_same_identity(probe_ids, gallery_ids, probe_keys, gallery_keys) -> np.ndarray:
    probe_ids = np.asarray(probe_ids, dtype=object)
    gallery_ids = np.asarray(gallery_ids, dtype=object)
    same = probe_ids[:, None] == gallery_ids[None, :]
    return same & _allowed_pairs(probe_keys, gallery_keys, same.shape)


def rank1_hits(probes: np.ndarray, probe_ids: Sequence, gallery: np.ndarray,
               gallery_ids: Sequence, metric: str = "euclidean", *,
               probe_keys: Sequence | None = None, gallery_keys: Sequence | None = None,
               unprotected: np.ndarray | None = None) -> np.ndarray:
    """Per identifiable probe: ``True`` when its nearest gallery entry has the same identity.

    Args:
        probe_keys, gallery_keys: what photo each row is (e.g. a file digest). A probe is never
            matched against its own photo, so a gallery may hold the other probes
            (leave-one-out linking) without the probe finding itself.
        unprotected: ``(N,)`` bool, faces the method failed on: each counts as identified
            (``True``) when its identity is in the gallery, whatever its nearest neighbour is —
            a face the method did not protect is never reported as protected.
    """
    probes, gallery = _rows(probes), _rows(gallery)
    probe_ids, gallery_ids = np.asarray(probe_ids, dtype=object), np.asarray(gallery_ids, dtype=object)
    if len(probe_ids) != len(probes) or len(gallery_ids) != len(gallery):
        raise ValueError("one identity per embedding is needed")
    if len(gallery) == 0:
        return np.zeros(0, dtype=bool)
    allowed = _allowed_pairs(probe_keys, gallery_keys, (len(probes), len(gallery)))
    keep = ((probe_ids[:, None] == gallery_ids[None, :]) & allowed).any(axis=1)
    if not keep.any():
        return np.zeros(0, dtype=bool)
    distances = np.where(allowed[keep], pairwise_distance(probes[keep], gallery, metric), np.inf)
    hits = gallery_ids[distances.argmin(axis=1)] == probe_ids[keep]
    if unprotected is not None:
        unprotected = np.asarray(unprotected, dtype=bool).reshape(-1)
        if unprotected.shape != (len(probes),):
            raise ValueError("one unprotected flag per probe is needed")
        hits |= unprotected[keep]
    return hits


def genuine_impostor_distances(probes: np.ndarray, probe_ids: Sequence, gallery: np.ndarray,
                               gallery_ids: Sequence, metric: str = "euclidean",
                               exclude_same_index: bool = False, *,
                               probe_keys: Sequence | None = None,
                               gallery_keys: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All probe × gallery distances split into same-identity and different-identity pairs.

    Args:
        exclude_same_index: drop the diagonal (when probes and gallery are the same list).
        probe_keys, gallery_keys: drop pairs of a photo with itself (see :func:`rank1_hits`).
    """
    distances = pairwise_distance(probes, gallery, metric)
    same = np.asarray(probe_ids, dtype=object)[:, None] == np.asarray(gallery_ids, dtype=object)[None, :]
    valid = _allowed_pairs(probe_keys, gallery_keys, same.shape)
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
