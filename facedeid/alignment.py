"""Stage two of the pipeline: cut each face out, and paste a processed face back.

Two kinds of crop, because methods need different things:

* **box crops** (:func:`box_crop`): an axis-aligned window around the face at the image's own
  resolution. Pixel operators (mosaic, blur, ...) work here so that "8-pixel blocks" means
  8 image pixels, as in the QM-VAE paper, and nothing is resampled.
* **aligned crops** (:class:`FaceAligner`): the face warped by a similarity transform (rotation,
  uniform scale, translation) so its five landmarks land on a fixed template — what learned
  models (QM-VAE, k-Same, recognizers) expect.

Both return the crop, the face geometry in crop coordinates, and a **blend mask**: 1 over the
whole anonymized region, falling to 0 over a feather band *outside* it, so blending never
weakens the anonymization of the face itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .detection.base import Face

# Canonical five points for a 112x112 crop (the widely used ArcFace layout), in the order of
# facedeid.detection.base: left eye, right eye, nose, mouth left, mouth right.
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


@dataclass
class FaceCrop:
    """A face cut out of an image, ready for a de-identification method.

    Attributes:
        pixels: ``(h, w, 3) uint8`` RGB crop.
        landmarks: ``(5, 2)`` canonical points in crop coordinates (NaN where unknown).
        box: ``(4,)`` face box in crop coordinates.
        mask: ``(h, w) float32`` in [0, 1]: where the result replaces the original.
        to_image: ``(2, 3)`` affine matrix from crop to image coordinates.
    """

    pixels: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    mask: np.ndarray
    to_image: np.ndarray


def estimate_landmarks_from_box(box: np.ndarray) -> np.ndarray:
    """Typical canonical points for a frontal face filling ``box`` (fallback when no landmarker)."""
    x0, y0, x1, y1 = box
    unit = (TEMPLATE_112 - [18.0, 28.0]) / [76.0, 84.0]  # template relative to its face box
    return (np.array([x0, y0]) + unit * [x1 - x0, y1 - y0]).astype(np.float32)


def _fill_box(hard: np.ndarray, box: np.ndarray) -> None:
    x0, y0, x1, y1 = box
    hard[max(int(np.floor(y0)), 0):max(int(np.ceil(y1)), 0),
         max(int(np.floor(x0)), 0):max(int(np.ceil(x1)), 0)] = 1


def _feathered_region_mask(shape: tuple[int, int], region: np.ndarray, feather: float,
                           ellipse: bool, must_cover: np.ndarray | None = None) -> np.ndarray:
    """1 inside ``region`` (x0, y0, x1, y1; ellipse or rectangle), linear fall-off outside.

    ``must_cover``: a box that is added to the hard region whatever its shape (the detected
    face box: an ellipse through an expanded box still misses the box's corners).
    """
    height, width = shape
    hard = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = region
    if ellipse:
        centre = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
        axes = (max(int(round((x1 - x0) / 2)), 1), max(int(round((y1 - y0) / 2)), 1))
        cv2.ellipse(hard, centre, axes, 0, 0, 360, 1, thickness=-1)
    else:
        _fill_box(hard, region)
    if must_cover is not None:
        _fill_box(hard, must_cover)
    if feather <= 0:
        return hard.astype(np.float32)
    outside_distance = cv2.distanceTransform(1 - hard, cv2.DIST_L2, 5)
    return np.clip(1.0 - outside_distance / feather, 0.0, 1.0).astype(np.float32)


def box_crop(image: np.ndarray, face: Face, expand: float = 1.3, feather: float = 0.1,
             shape: str = "ellipse") -> tuple[FaceCrop, tuple[int, int, int, int]]:
    """Axis-aligned crop around ``face``.

    Args:
        expand: the anonymized region is the face box scaled by this about its centre.
        feather: width of the soft edge outside the region, as a fraction of its larger side.
        shape: ``"ellipse"`` or ``"box"`` for the anonymized region; the detected box itself
            is always inside it (an ellipse adds the box's corners).

    Returns:
        The crop, and its window ``(x0, y0, x1, y1)`` in integer image coordinates.
    """
    height, width = image.shape[:2]
    centre = face.center
    half = np.array([face.width, face.height]) * expand / 2
    region = np.concatenate([centre - half, centre + half])
    feather_px = float(feather * max(face.width, face.height) * expand)
    margin = feather_px + 1
    x0 = int(max(np.floor(region[0] - margin), 0))
    y0 = int(max(np.floor(region[1] - margin), 0))
    x1 = int(min(np.ceil(region[2] + margin), width))
    y1 = int(min(np.ceil(region[3] + margin), height))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {face.box.tolist()} lies outside the {width}x{height} image")
    offset = np.array([x0, y0], dtype=np.float32)
    local_region = region - np.tile(offset, 2)
    local_box = face.box - np.tile(offset, 2)
    mask = _feathered_region_mask((y1 - y0, x1 - x0), local_region, feather_px, shape == "ellipse",
                                  must_cover=local_box)
    landmarks = (face.landmarks if face.landmarks is not None
                 else estimate_landmarks_from_box(face.box)) - offset
    to_image = np.array([[1, 0, x0], [0, 1, y0]], dtype=np.float32)
    crop = FaceCrop(pixels=image[y0:y1, x0:x1].copy(), landmarks=landmarks.astype(np.float32),
                    box=local_box, mask=mask, to_image=to_image)
    return crop, (x0, y0, x1, y1)


class FaceAligner:
    """Similarity-transform alignment of a face onto a square canonical crop.

    Args:
        size: side of the aligned crop in pixels.
        face_fraction: how much of the crop the 112-template's face occupies (smaller leaves
            more hair and chin in the crop; 1.0 is the tight ArcFace crop).
        feather: soft edge of the paste-back mask, as a fraction of ``size``.
    """

    def __init__(self, size: int = 128, face_fraction: float = 0.8, feather: float = 0.08):
        self.size = int(size)
        self.face_fraction = float(face_fraction)
        self.feather = float(feather)
        scale = self.size * self.face_fraction / 112.0
        self.template = (TEMPLATE_112 * scale + self.size * (1 - self.face_fraction) / 2).astype(
            np.float32)
        # Paste-back region: an ellipse through the template's face extent, inset by the feather.
        inner = self.size * (0.5 - self.feather)
        centre = self.size / 2
        region = np.array([centre - inner * 0.85, centre - inner, centre + inner * 0.85,
                           centre + inner])
        self.mask = _feathered_region_mask((self.size, self.size), region,
                                           self.feather * self.size, ellipse=True)

    def transform(self, landmarks: np.ndarray) -> np.ndarray:
        """``(2, 3)`` matrix from image to crop coordinates (least squares over known points)."""
        from skimage.transform import SimilarityTransform

        known = np.isfinite(landmarks).all(axis=1)
        if known.sum() < 2:
            raise ValueError("alignment needs at least two known landmarks")
        if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            tform = SimilarityTransform.from_estimate(landmarks[known], self.template[known])
        else:
            tform = SimilarityTransform()
            tform.estimate(landmarks[known], self.template[known])
        return tform.params[:2].astype(np.float32)

    def align(self, image: np.ndarray, face: Face) -> FaceCrop:
        """Warp ``face`` onto the canonical crop."""
        landmarks = face.landmarks if face.landmarks is not None \
            else estimate_landmarks_from_box(face.box)
        to_crop = self.transform(landmarks)
        pixels = cv2.warpAffine(image, to_crop, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        to_image = cv2.invertAffineTransform(to_crop)
        points = _apply_affine(to_crop, landmarks)
        corners = _apply_affine(to_crop, face.box.reshape(2, 2))
        return FaceCrop(pixels=pixels, landmarks=points, box=corners.reshape(4), mask=self.mask,
                        to_image=to_image)

    def align_many(self, image: np.ndarray, faces: list[Face]) -> list[FaceCrop]:
        return [self.align(image, face) for face in faces]


def _apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def paste_back(image: np.ndarray, crop: FaceCrop, processed: np.ndarray,
               coverage: np.ndarray | None = None) -> np.ndarray:
    """Blend ``processed`` (same shape as ``crop.pixels``) into ``image`` in place.

    Args:
        coverage: optional ``(H, W) float32`` image-sized array; the blend mask is max-merged
            into it so callers know which pixels were anonymized (and how strongly).

    Returns:
        ``image`` (modified in place).
    """
    if processed.shape != crop.pixels.shape:
        raise ValueError(f"method returned shape {processed.shape}, expected {crop.pixels.shape}")
    height, width = image.shape[:2]
    matrix = crop.to_image
    if np.allclose(matrix[:, :2], np.eye(2)):  # box crop: pure translation, no resampling
        x0, y0 = int(round(matrix[0, 2])), int(round(matrix[1, 2]))
        h, w = processed.shape[:2]
        window = (slice(y0, y0 + h), slice(x0, x0 + w))
        mask = crop.mask[..., None]
        blended = image[window] * (1 - mask) + processed.astype(np.float32) * mask
        image[window] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        if coverage is not None:
            np.maximum(coverage[window], crop.mask, out=coverage[window])
        return image
    # Aligned crop: warp result and mask back into the bounding window of the crop.
    corners = _apply_affine(matrix, np.array([[0, 0], [crop.pixels.shape[1], 0],
                                              [0, crop.pixels.shape[0]],
                                              [crop.pixels.shape[1], crop.pixels.shape[0]]]))
    x0 = int(max(np.floor(corners[:, 0].min()), 0))
    y0 = int(max(np.floor(corners[:, 1].min()), 0))
    x1 = int(min(np.ceil(corners[:, 0].max()) + 1, width))
    y1 = int(min(np.ceil(corners[:, 1].max()) + 1, height))
    if x1 <= x0 or y1 <= y0:
        return image
    local = matrix.copy()
    local[:, 2] -= [x0, y0]
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(processed, local, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    mask = cv2.warpAffine(crop.mask, local, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    window = (slice(y0, y1), slice(x0, x1))
    blended = image[window] * (1 - mask[..., None]) + warped * mask[..., None]
    image[window] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if coverage is not None:
        np.maximum(coverage[window], mask, out=coverage[window])
    return image
