"""QM-VAE's training data: aligned faces, their de-identified versions and the service's view.

Every readable image with a detectable face gives one aligned crop (the target, never a network
input), the crop de-identified by each input method of the model (the network's input stack,
built by :func:`facedeid.methods.qmvae.deidentified_versions` exactly as at inference) and
the window the service would crop from the photo once the fused face is pasted back
(:class:`ServiceViews`). Unreadable images and images without a face are skipped and counted.
Stacks are cached as npz (:func:`build_face_stacks`).

Faces are found by :class:`facedeid.detection.locate.FaceLocator` and "the face" of an image is
:func:`facedeid.detection.locate.main_face`, as everywhere else in the project.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InvalidInputError
from ..io.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

# Part of the cache key: how the face of each image was chosen. v3: FaceLocator (second chance
# before "no face") and main_face (largest box, ties by score); v2 stacks used the largest box
# of the first detector pass only.
LOCATE_RULE = "v3-locator-main_face"


@dataclass
class FaceStacks:
    """Aligned training/test faces and their de-identified versions.

    Attributes:
        names: file name of each face.
        originals: ``(N, S, S, 3) uint8`` aligned originals (targets only).
        versions: ``(N, M, S, S, 3) uint8``, M = number of input methods, in ``inputs`` order.
        to_image: ``(N, 2, 3) float32`` crop-to-image affine (to paste results back).
        skipped: ``{reason: count}`` of images left out.
        views: what the service sees of each face once the fused crop is pasted back
            (:class:`ServiceViews`); None for stacks built without it.
    """

    names: list[str]
    originals: np.ndarray
    versions: np.ndarray
    to_image: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    views: "ServiceViews | None" = None

    def __len__(self) -> int:
        return len(self.names)

    def stacks(self, indices: np.ndarray | slice | None = None) -> np.ndarray:
        """``(n, S, S, 3M) uint8`` model inputs for ``indices``."""
        versions = self.versions if indices is None else self.versions[indices]
        return np.concatenate(list(np.moveaxis(versions, 1, 0)), axis=-1)

    def subset(self, indices: np.ndarray) -> "FaceStacks":
        return FaceStacks([self.names[i] for i in indices], self.originals[indices],
                          self.versions[indices], self.to_image[indices], dict(self.skipped),
                          None if self.views is None else self.views.subset(indices))


@dataclass
class ServiceViews:
    """The service's window on each face *after paste-back*, as a differentiable resampling.

    The paper's evaluator (§3.2, Fig. 1) runs on the whole published image: Haar finds the face,
    the window is resized to 64x64 and classified. Training the service term on the bare aligned
    crop optimises a different picture (other framing, no hair or background, no paste-back
    seam) than the one the service will judge. So each training face stores, for every pixel
    of its service window, where that pixel falls in the aligned crop (``grid``), how much of
    the fused face the paste-back mask lets through there (``weight``) and the untouched
    original around it (``background``);
    :func:`render_views` then produces exactly the window the evaluator will see, with gradients
    to the fused face.

    Attributes:
        grid: ``(N, V, V, 2) float32`` crop pixel coordinates (x, y) of each window pixel.
        weight: ``(N, V, V) float32`` paste-back mask at those points, in [0, 1].
        background: ``(N, V, V, 3) uint8`` the original image resampled on the window.
        found: ``(N,)`` bool, the Haar cascade found the face on the original (else the window
            is the square around the detector's box).
    """

    grid: np.ndarray
    weight: np.ndarray
    background: np.ndarray
    found: np.ndarray

    def subset(self, indices: np.ndarray) -> "ServiceViews":
        return ServiceViews(self.grid[indices], self.weight[indices], self.background[indices],
                            self.found[indices])


def service_view(image: np.ndarray, crop, face_box: np.ndarray, haar, size: int = 64):
    """One face's :class:`ServiceViews` row: ``(grid, weight, background, found)``.

    The window is chosen as :class:`~facedeid.evaluation.services.expression.ExpressionService`
    does (largest Haar face overlapping the known box, else the square around the box) and
    sampled at pixel centres, as ``cv2.resize`` does.
    """
    import cv2

    from ..evaluation.services.expression import choose_haar_face, square_around

    haar_boxes = np.array([found.box for found in haar.detect(image)])
    window = choose_haar_face(haar_boxes, face_box, 0.2)
    found = window is not None
    if window is None:
        window = square_around(face_box)
    x0, y0, x1, y1 = [float(v) for v in window]
    steps = (np.arange(size, dtype=np.float32) + 0.5) / size
    xs = x0 + steps * (x1 - x0) - 0.5
    ys = y0 + steps * (y1 - y0) - 0.5
    image_x, image_y = np.meshgrid(xs, ys)
    background = cv2.remap(image, image_x, image_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    to_crop = cv2.invertAffineTransform(crop.to_image)
    crop_x = to_crop[0, 0] * image_x + to_crop[0, 1] * image_y + to_crop[0, 2]
    crop_y = to_crop[1, 0] * image_x + to_crop[1, 1] * image_y + to_crop[1, 2]
    weight = cv2.remap(crop.mask.astype(np.float32), crop_x, crop_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return (np.stack([crop_x, crop_y], axis=-1).astype(np.float32), weight.astype(np.float32),
            background, found)


def render_views(faces, views: ServiceViews, indices=None):
    """Fused faces ``(B, 3, S, S)`` in [0, 1] -> the service windows ``(B, 3, V, V)``.

    Differentiable in ``faces`` (bilinear ``grid_sample``): the paste-back blend
    ``weight * fused + (1 - weight) * original`` on the window the evaluator crops.
    """
    import torch
    import torch.nn.functional as F

    rows = slice(None) if indices is None else indices
    size = faces.shape[-1]
    grid = torch.from_numpy(np.ascontiguousarray(views.grid[rows]))
    grid = (grid + 0.5) / size * 2.0 - 1.0  # pixel coordinates -> [-1, 1], align_corners=False
    sampled = F.grid_sample(faces, grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
    weight = torch.from_numpy(np.ascontiguousarray(views.weight[rows]))[:, None]
    background = torch.from_numpy(np.ascontiguousarray(views.background[rows])).permute(0, 3, 1, 2)
    return weight * sampled + (1.0 - weight) * background.float() / 255.0


def list_images(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files of ``folder`` sorted by name (CelebA order), the first ``limit`` of them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"training data folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInputError(f"no image files in {folder}")
    return files[:limit] if limit else files


def _cache_key(paths: Sequence[Path], inputs: Sequence[str], size: int, detector: str) -> str:
    digest = hashlib.sha256()
    for item in [*(str(p.resolve()) for p in paths), *inputs, str(size), detector, LOCATE_RULE]:
        digest.update(item.encode())
    return digest.hexdigest()[:16]


def build_face_stacks(paths: Sequence[Path], inputs: Sequence[str], size: int = 64,
                      detector: str = "centerface", cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> FaceStacks:
    """Detect, align and de-identify every image (cached as npz under ``cache_dir``).

    The face of each image is :func:`~facedeid.detection.locate.main_face` of what the
    :class:`~facedeid.detection.locate.FaceLocator` finds (second chance included). Unreadable
    files and images without a face are skipped and counted in ``skipped``.
    """
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"qmvae_stacks_{_cache_key(paths, inputs, size, detector)}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as data:
                views = ServiceViews(data["view_grid"], data["view_weight"],
                                     data["view_background"], data["view_found"])
                return FaceStacks(list(data["names"]), data["originals"], data["versions"],
                                  data["to_image"], json.loads(str(data["skipped"])), views)
    from ..alignment import FaceAligner
    from ..detection.haar import HaarDetector
    from ..detection.locate import FaceLocator, main_face
    from ..io.images import read_image
    from ..methods.qmvae import build_input_methods, deidentified_versions

    methods = build_input_methods(inputs)
    locator = FaceLocator(detector, landmarks="dlib5")
    aligner = FaceAligner(size=size)
    haar = HaarDetector()
    names, originals, versions, matrices, view_rows = [], [], [], [], []
    skipped: dict[str, int] = {}
    for index, path in enumerate(tqdm(paths, desc="aligning + de-identifying", unit="img",
                                      disable=not progress, dynamic_ncols=True)):
        try:
            rgb = read_image(path).rgb
        except Exception as error:  # noqa: BLE001 - any decoding failure means "unreadable"
            log.warning("skipping unreadable %s: %s", path, error)
            skipped["unreadable"] = skipped.get("unreadable", 0) + 1
            continue
        face = main_face(locator.locate(rgb))
        if face is None:
            skipped["no_face"] = skipped.get("no_face", 0) + 1
            continue
        crop = aligner.align(rgb, face)
        names.append(path.name)
        originals.append(crop.pixels)
        versions.append(np.stack(deidentified_versions(crop, methods, (index,))))
        matrices.append(crop.to_image)
        view_rows.append(service_view(rgb, crop, face.box, haar))
    if not names:
        raise InvalidInputError(f"none of the {len(paths)} images had a readable, detectable face "
                                f"(skipped: {skipped})")
    grids, weights, backgrounds, found = (np.stack(column) for column in zip(*view_rows))
    stacks = FaceStacks(names, np.stack(originals), np.stack(versions),
                        np.stack(matrices).astype(np.float32), skipped,
                        ServiceViews(grids, weights, backgrounds, found))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(suffix=".npz", dir=cache_file.parent)
        os.close(handle)
        np.savez(temporary, names=np.array(names), originals=stacks.originals,
                 versions=stacks.versions, to_image=stacks.to_image, skipped=json.dumps(skipped),
                 view_grid=grids, view_weight=weights, view_background=backgrounds,
                 view_found=found)
        os.replace(temporary, cache_file)
    return stacks

