"""The k-Same family: k-anonymity for face sets (book ch. 3.1.2, Wen et al. 2024).

Implements:

* **k-Same-Pixel** and **k-Same-Eigen** (Newton, Sweeney & Malin, "Preserving privacy by
  de-identifying face images", IEEE TKDE 17(2), 2005, the k-Same algorithm of its Fig. 3/4):
  repeatedly take the first remaining face Γ of the set H, find the k faces of H closest to Γ
  (Γ included), replace all k by their average, remove them from H. Averaging is pixel-wise
  (Pixel) or of PCA coefficients, reconstructed from the eigenfaces (Eigen). When fewer than
  2k faces remain, all of them form the last cluster (the "if |H| < 2k then k <- |H|" step of
  the k-Same listing in Gross et al. 2005), so every cluster has between k and 2k-1 members.
  Guarantee (Newton et al., Theorem): every output appears at least k times, so any recognizer
  that matches outputs against the *original* faces is right for at most one face per cluster:
  rank-1 <= 1/k — provided each person appears once in H (a person-specific set).
* **k-Same-Select** (Gross, Airoldi, Malin & Sweeney, "Integrating utility into face
  de-identification", PET 2005): partition H by a utility label (expression, gender, ...) and run
  k-Same inside every part, so the average keeps that label.

k-Same-M (averaging in an appearance model's shape and texture coefficients) is
:mod:`facedeid.methods.ksame_m`; k-Same-Net (averaging in a generator's latent space) is
:mod:`facedeid.methods.ksame_net`.

Two ways to use it:

* dataset level, the setting the guarantee holds in: :func:`k_same_pixel`,
  :func:`k_same_eigen`, :func:`k_same_select` on an ``(N, S, S, 3)`` stack of aligned faces
  (``facedeid.alignment.FaceAligner``);
* per image, the registered method ``ksame``: it holds a *gallery* of aligned faces fitted once
  and replaces each face by the average of itself and its k-1 nearest gallery faces. One image
  at a time nobody else shares that output, so **the 1/k bound does not hold per image**: the
  result keeps a 1/k share of the original face. The gallery is a folder of face photos passed
  as ``gallery=FOLDER`` (one photo per person, or one sub-folder per person of which the first
  photo is used); without it the method falls back to the 160 train people of celeba-id200's
  identity-disjoint split under ``../shared/data`` when that exists and raises :class:`InvalidParameterError` otherwise.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..alignment import FaceCrop
from ..errors import InvalidInputError, InvalidParameterError
from .base import DeidMethod, FaceContext, Param
from .registry import register

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".gif"}
DEFAULT_GALLERY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "celeba-id200"


# ---------------------------------------------------------------------------------------------
# Dataset-level core (pure functions)

def _check_set(aligned: np.ndarray, k: int, identities: np.ndarray | None) -> np.ndarray:
    aligned = np.asarray(aligned)
    if aligned.ndim != 4 or aligned.shape[-1] != 3:
        raise InvalidInputError(f"expected (N, H, W, 3) aligned faces, got shape {aligned.shape}")
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise InvalidParameterError(f"k must be an integer >= 2 (k = 1 changes nothing), got {k!r}")
    if k > len(aligned):
        raise InvalidParameterError(
            f"k = {k} is larger than the set of {len(aligned)} faces: k-Same needs at least k "
            "faces to average; use a smaller k or a larger set")
    if identities is not None:
        identities = np.asarray(identities)
        if len(identities) != len(aligned):
            raise InvalidInputError(f"{len(identities)} identity labels for {len(aligned)} faces")
        distinct = len(np.unique(identities))
        if distinct < 2:
            raise InvalidParameterError(
                "the face set holds a single identity: averaging photos of one person hides "
                "nothing; k-Same needs a set of different people (one photo each)")
        if distinct < k:
            raise InvalidParameterError(
                f"the set holds only {distinct} distinct identities, fewer than k = {k}: no "
                "cluster of k different people exists")
        if distinct < len(identities):
            raise InvalidParameterError(
                "k-Same assumes a person-specific set (each identity once; Newton et al. 2005); "
                f"{len(identities) - distinct} faces repeat an identity. Keep one photo per person")
    return aligned


def k_same_clusters(features: np.ndarray, k: int) -> list[np.ndarray]:
    """Newton et al.'s k-Same grouping of ``(N, D)`` feature rows into clusters of k..2k-1.

    Γ is the first remaining face (set order), its cluster the k remaining faces closest to Γ in
    Euclidean distance (Γ itself at distance 0; ties broken by index), until fewer than 2k remain,
    which form the last cluster.
    """
    features = np.asarray(features, dtype=np.float64)
    remaining = list(range(len(features)))
    clusters = []
    while remaining:
        if len(remaining) < 2 * k:
            clusters.append(np.array(remaining))
            break
        anchor = remaining[0]
        candidates = np.array(remaining)
        distances = np.sum((features[candidates] - features[anchor]) ** 2, axis=1)
        chosen = candidates[np.lexsort((candidates, distances))[:k]]
        clusters.append(np.sort(chosen))
        chosen_set = set(chosen.tolist())
        remaining = [i for i in remaining if i not in chosen_set]
    return clusters


class EigenFaces:
    """PCA of flattened aligned faces (Turk & Pentland), fitted with an SVD in numpy.

    Not scikit-learn: it is not a dependency of the project, and a thin SVD suffices.
    """

    def __init__(self, faces: np.ndarray, n_components: int):
        flat = faces.reshape(len(faces), -1).astype(np.float64)
        self.shape = faces.shape[1:]
        self.mean = flat.mean(axis=0)
        n_components = int(min(n_components, len(faces) - 1))
        if n_components < 1:
            raise InvalidParameterError("eigenfaces need at least two faces")
        _, singular, basis = np.linalg.svd(flat - self.mean, full_matrices=False)
        self.basis = basis[:n_components]           # (C, D) orthonormal rows
        self.variance_ratio = (singular[:n_components] ** 2).sum() / max((singular ** 2).sum(), 1e-12)

    def project(self, faces: np.ndarray) -> np.ndarray:
        flat = np.asarray(faces).reshape(len(faces), -1).astype(np.float64)
        return (flat - self.mean) @ self.basis.T

    def reconstruct(self, coefficients: np.ndarray) -> np.ndarray:
        flat = coefficients @ self.basis + self.mean
        return np.clip(np.rint(flat), 0, 255).astype(np.uint8).reshape((-1, *self.shape))


def k_same_pixel(aligned: np.ndarray, k: int, identities: np.ndarray | None = None) -> np.ndarray:
    """k-Same-Pixel: ``(N, S, S, 3)`` uint8 aligned faces -> same shape, each the pixel-wise
    average of its k-Same cluster (neighbours found by pixel distance).

    Args:
        identities: optional ``(N,)`` labels, used only to reject sets k-Same cannot protect
            (one identity, fewer than k identities, repeated identities).
    """
    aligned = _check_set(aligned, k, identities)
    flat = aligned.reshape(len(aligned), -1).astype(np.float64)
    out = np.empty_like(aligned)
    for cluster in k_same_clusters(flat, k):
        out[cluster] = np.clip(np.rint(flat[cluster].mean(axis=0)), 0, 255).astype(
            np.uint8).reshape(aligned.shape[1:])
    return out


def k_same_eigen(aligned: np.ndarray, k: int, n_components: int = 50,
                 identities: np.ndarray | None = None) -> np.ndarray:
    """k-Same-Eigen: cluster by distance between PCA coefficients (eigenfaces fitted on the set),
    average the coefficients, reconstruct. Same shapes as :func:`k_same_pixel`."""
    aligned = _check_set(aligned, k, identities)
    eigen = EigenFaces(aligned, n_components)
    coefficients = eigen.project(aligned)
    out = np.empty_like(aligned)
    for cluster in k_same_clusters(coefficients, k):
        out[cluster] = eigen.reconstruct(coefficients[cluster].mean(axis=0, keepdims=True))[0]
    return out


def k_same_select(aligned: np.ndarray, k: int, groups: np.ndarray, variant: str = "pixel",
                  identities: np.ndarray | None = None, n_components: int = 50) -> np.ndarray:
    """k-Same-Select: k-Same inside each part of the partition given by ``groups`` ((N,) labels,
    e.g. expression or gender), so every average keeps its part's label.

    Raises:
        InvalidParameterError: a part holds fewer than k faces (it cannot be k-anonymised
            without mixing labels; merge it with another part or lower k).
    """
    aligned = _check_set(aligned, k, identities)
    groups = np.asarray(groups)
    if len(groups) != len(aligned):
        raise InvalidInputError(f"{len(groups)} group labels for {len(aligned)} faces")
    if variant not in ("pixel", "eigen"):
        raise InvalidParameterError(f"variant must be 'pixel' or 'eigen', got {variant!r}")
    out = np.empty_like(aligned)
    for label in np.unique(groups):
        part = np.flatnonzero(groups == label)
        if len(part) < k:
            raise InvalidParameterError(
                f"k-Same-Select: group {label!r} has {len(part)} faces, fewer than k = {k}; "
                "merge small groups or lower k")
        if variant == "pixel":
            out[part] = k_same_pixel(aligned[part], k)
        else:
            out[part] = k_same_eigen(aligned[part], k, n_components)
    return out


# ---------------------------------------------------------------------------------------------
# Per-image method with a fitted gallery

def _gallery_files(folder: Path) -> list[Path]:
    """One image per person: files directly in ``folder`` count as one person each; each
    sub-folder counts as one person, represented by its first image (sorted by name)."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        inside = [p for p in sorted(sub.iterdir()) if p.is_file()
                  and (p.suffix.lower() in _IMAGE_SUFFIXES or p.suffix == "")]
        if inside:
            files.append(inside[0])
    return files


def _default_gallery_files(root: Path) -> list[Path]:
    """First photo of each of the 160 *train* people of celeba-id200's identity-disjoint split.

    Never the 40 test people: a gallery holding another photo of the person being hidden would
    average that person back in (the audit measured 22 of 200 test faces still recognised by
    dlib when the gallery held one photo of each of all 200 people).
    """
    from ..io.datasets import DISJOINT_SPLIT_FILE, read_celeba_id200_index
    seen, files = set(), []
    for name, identity, is_train in read_celeba_id200_index(root, DISJOINT_SPLIT_FILE):
        if is_train and identity not in seen:
            seen.add(identity)
            files.append(root / "img_align_celeba" / name)
    return files


@lru_cache(maxsize=4)
def fit_gallery(gallery: str, size: int) -> np.ndarray:
    """Locate (:class:`~facedeid.detection.locate.FaceLocator`, CenterFace) and align
    (``FaceAligner(size)``) the :func:`~facedeid.detection.locate.main_face` of each photo.

    Returns:
        ``(G, size, size, 3)`` uint8 aligned faces (photos without a face are skipped).
    """
    from ..alignment import FaceAligner
    from ..detection.locate import FaceLocator, main_face
    from ..io.images import read_image

    if gallery:
        folder = Path(gallery).expanduser()
        if not folder.is_dir():
            raise InvalidParameterError(f"k-Same gallery {folder} is not a folder of face photos")
        files = _gallery_files(folder)
    elif (DEFAULT_GALLERY / "identity_split_disjoint.txt").is_file():
        files = _default_gallery_files(DEFAULT_GALLERY)
    else:
        raise InvalidParameterError(
            "k-Same needs a gallery of other people's faces to average with, and none was given. "
            "Pass gallery=FOLDER: a folder with one frontal face photo per person (or one "
            "sub-folder per person), at least k different people. (The default gallery, "
            f"celeba-id200 at {DEFAULT_GALLERY}, is not present on this machine.)")
    locator = FaceLocator("centerface")
    aligner = FaceAligner(size)
    crops = []
    for path in files:
        try:
            image = read_image(path).rgb
        except Exception:
            continue
        face = main_face(locator.locate(image))
        if face is not None:
            crops.append(aligner.align(image, face).pixels)
    if len(crops) < 2:
        raise InvalidParameterError(
            f"the k-Same gallery {gallery or DEFAULT_GALLERY} yields {len(crops)} face(s); it needs "
            "photos of at least k different people (one identity hides nothing)")
    return np.stack(crops)


def nearest_in_gallery(gallery: np.ndarray, query: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` rows of ``gallery`` closest to ``query`` (Euclidean), ties
    broken by gallery order, so the same input always meets the same neighbours."""
    distances = np.sum((gallery - query) ** 2, axis=1)
    return np.lexsort((np.arange(len(gallery)), distances))[:count]


def require_gallery_size(k: int, usable: int, qualifier: str = "") -> None:
    """Refuse a k the gallery cannot serve: the input plus k-1 *other* faces are averaged.

    ``qualifier`` follows the usable count in the message (e.g. which faces count as usable).
    """
    if k - 1 > usable:
        raise InvalidParameterError(
            f"k = {k} needs {k - 1} gallery faces besides the input, the gallery has "
            f"{usable}{qualifier}; lower k or pass a larger gallery")


def k_same_with_gallery(face: np.ndarray, gallery: np.ndarray, k: int, variant: str = "pixel",
                        eigen: EigenFaces | None = None) -> np.ndarray:
    """Average of ``face`` ((S, S, 3) uint8) and its k-1 nearest ``gallery`` faces.

    Neighbours are the deterministic Newton-style cluster around Γ = ``face``: smallest
    Euclidean distance in pixel space (``variant="pixel"``) or PCA space (``"eigen"``, which
    also averages and reconstructs in that space), ties broken by gallery order.
    """
    require_gallery_size(k, len(gallery))
    if variant == "eigen":
        if eigen is None:
            raise InvalidParameterError("variant 'eigen' needs fitted eigenfaces")
        gallery_coefficients = eigen.project(gallery)
        face_coefficients = eigen.project(face[None])
        nearest = nearest_in_gallery(gallery_coefficients, face_coefficients[0], k - 1)
        members = np.concatenate([face_coefficients, gallery_coefficients[nearest]])
        return eigen.reconstruct(members.mean(axis=0, keepdims=True))[0]
    flat_gallery = gallery.reshape(len(gallery), -1).astype(np.float64)
    flat_face = face.reshape(1, -1).astype(np.float64)
    nearest = nearest_in_gallery(flat_gallery, flat_face[0], k - 1)
    average = np.concatenate([flat_face, flat_gallery[nearest]]).mean(axis=0)
    return np.clip(np.rint(average), 0, 255).astype(np.uint8).reshape(face.shape)


@register
class KSame(DeidMethod):
    """Per-image k-Same: the face becomes the average of itself and k-1 similar gallery faces."""

    name = "ksame"
    summary = "k-Same-Pixel/Eigen against a gallery of other faces (Newton et al. 2005)"
    reference = ("Newton, Sweeney & Malin, IEEE TKDE 2005 (k-Same-Pixel, k-Same-Eigen); "
                 "Gross et al., PET 2005 (k-Same-Select); book ch. 3.1.2")
    space = "aligned"
    aligned_size = 128
    params = (
        Param("k", int, 10, "faces averaged (the input and its k-1 nearest gallery faces). "
              "De-identifies from 5 (dlib re-identified 13/20 CelebA faces at k=2, 8/20 at 3, "
              "5/20 at 5, 1/20 at 10; benchmarks/weak_params.py)",
              minimum=2, maximum=1000, safe_min=5),
        Param("variant", str, "pixel", "average pixels or eigenface coefficients",
              choices=("pixel", "eigen")),
        Param("gallery", str, "", "folder of face photos, one per person (or one sub-folder "
              "per person); empty = the 160 train people of celeba-id200's identity-disjoint "
              "split when ../shared/data exists"),
        Param("components", int, 50, "eigenfaces kept (variant=eigen)", minimum=1, maximum=2000),
    )

    def _fitted(self) -> tuple[np.ndarray, EigenFaces | None]:
        if not hasattr(self, "_gallery"):
            gallery = fit_gallery(self.config["gallery"], self.aligned_size)
            if self.config["k"] - 1 > len(gallery):
                raise InvalidParameterError(
                    f"k = {self.config['k']} is larger than the gallery allows ({len(gallery)} "
                    "faces + the input); lower k or pass a larger gallery")
            eigen = (EigenFaces(gallery, self.config["components"])
                     if self.config["variant"] == "eigen" else None)
            self._gallery, self._eigen = gallery, eigen
        return self._gallery, self._eigen

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        gallery, eigen = self._fitted()
        if crop.pixels.shape != gallery.shape[1:]:
            raise InvalidInputError(f"ksame expects {gallery.shape[1:]} aligned crops, got "
                                    f"{crop.pixels.shape}")
        return k_same_with_gallery(crop.pixels, gallery, self.config["k"], self.config["variant"],
                                   eigen)
