"""What every face detector returns, and the interface it implements.

Coordinates are image pixels, ``x`` right and ``y`` down, as floats. Landmarks always use the
*canonical five points* in this order, whatever model produced them:

    0 left eye centre, 1 right eye centre, 2 nose tip, 3 left mouth corner, 4 right mouth corner

where "left" means the image's left (the subject's right eye for a frontal face). A point the
source model does not give is ``NaN`` (dlib's 5-point model has no mouth corners).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import cv2
import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: ``(4,)`` float32 ``x0, y0, x1, y1``.
        score: detector confidence (its own scale; 1.0 for detectors without one).
        landmarks: ``(5, 2)`` float32 canonical points, or ``None`` before landmarking.
        track_id: identity of the face across video frames (``None`` for still images).
    """

    box: np.ndarray
    score: float = 1.0
    landmarks: np.ndarray | None = None
    track_id: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2],
                        dtype=np.float32)

    @property
    def has_full_landmarks(self) -> bool:
        return self.landmarks is not None and bool(np.isfinite(self.landmarks).all())

    def to_dict(self) -> dict:
        """JSON-friendly form (used by sidecars and the video box export)."""
        out = {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4)}
        if self.landmarks is not None:
            out["landmarks"] = {name: (None if not np.isfinite(point).all()
                                       else [round(float(point[0]), 2), round(float(point[1]), 2)])
                                for name, point in zip(LANDMARK_NAMES, self.landmarks)}
        if self.track_id is not None:
            out["track_id"] = int(self.track_id)
        if self.extra.get("method_notes"):
            out["method_notes"] = dict(self.extra["method_notes"])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Face":
        landmarks = data.get("landmarks")
        if isinstance(landmarks, dict):
            landmarks = np.array([landmarks.get(n) if landmarks.get(n) is not None else [np.nan, np.nan]
                                  for n in LANDMARK_NAMES], dtype=np.float32)
        return cls(box=data["box"], score=float(data.get("score", 1.0)), landmarks=landmarks,
                   track_id=data.get("track_id"))


class FaceDetector(ABC):
    """A face detector: ``(H, W, 3) uint8 RGB`` image in, list of :class:`Face` out.

    Subclasses implement :meth:`_detect_raw` on an image at the size the network should see;
    the base class owns everything that must mean the same for every detector: the score
    threshold, the minimum face size, and **the scale**. By default an image is searched at its
    full resolution: one that is larger than :attr:`tile_size` is covered by overlapping tiles
    at full resolution plus one downscaled overview pass (for faces too large for a tile), and
    the results are merged. Downscaling a 6000-px photo to a network-friendly size makes its
    45-px faces 14 px wide, and a detector quietly misses them; tiling cannot miss them by
    construction. Callers who want speed over completeness pass ``max_side`` explicitly.
    """

    name: str = "detector"
    gives_landmarks: bool = False
    #: longest side one inference pass handles at full resolution; larger images are tiled.
    tile_size: int = 1280
    #: smallest face side (pixels, at the size the network sees) the detector finds reliably.
    smallest_face: int = 16

    def __init__(self, score_threshold: float = 0.5, min_face_size: float = 0.0,
                 max_side: int | None = None) -> None:
        self.score_threshold = float(score_threshold)
        self.min_face_size = float(min_face_size)
        if not np.isfinite(self.score_threshold) or not np.isfinite(self.min_face_size):
            raise ValueError("score_threshold and min_face_size must be finite numbers")
        if max_side is not None and int(max_side) < 32:
            raise ValueError("max_side must be >= 32 pixels (or None for full resolution)")
        self.max_side = None if max_side is None else int(max_side)

    def detect(self, image: np.ndarray, *, max_side: int | None = None,
               score_threshold: float | None = None) -> list[Face]:
        """Faces in ``image`` sorted by score, best first.

        Args:
            max_side: scale the image so its longer side is at most this and run one pass
                (faster, misses faces that become too small). ``None`` (default) uses the
                detector's own ``max_side`` setting, which is full resolution unless the user
                chose a scale.
            score_threshold: overrides the detector's threshold for this call only.
        """
        return self.detect_batch([image], max_side=max_side, score_threshold=score_threshold)[0]

    def detect_batch(self, images: list[np.ndarray], *, max_side: int | None = None,
                     score_threshold: float | None = None) -> list[list[Face]]:
        """Faces in each of several images (same size), with explicit settings.

        This is the public API for callers that batch (the video pipeline): every setting is
        an argument, none is changed on the shared detector object.
        """
        for image in images:
            _check_rgb(image)
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        max_side = max_side if max_side is not None else self.max_side
        if not images:
            return []
        height, width = images[0].shape[:2]
        if any(image.shape[:2] != (height, width) for image in images):
            raise ValueError("detect_batch needs images of one size")
        if max_side is not None or max(height, width) <= self.tile_size:
            raw = self._detect_scaled(images, max_side)
        else:
            raw = [self._detect_tiled(image) for image in images]
        return [self._filter(faces, threshold) for faces in raw]

    def _filter(self, faces: list[Face], threshold: float) -> list[Face]:
        kept = [face for face in faces if face.score >= threshold
                and min(face.width, face.height) >= self.min_face_size]
        return sorted(kept, key=lambda face: -face.score)

    def _detect_scaled(self, images: list[np.ndarray], max_side: int | None) -> list[list[Face]]:
        """One pass over each image scaled to ``max_side`` (``None``: as is), boxes in input pixels."""
        height, width = images[0].shape[:2]
        scale = 1.0
        if max_side and max(height, width) > max_side:
            scale = max_side / max(height, width)
        if scale == 1.0:
            return self._detect_raw_batch(images)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in images]
        found = self._detect_raw_batch(small)
        factor = np.array([width / size[0], height / size[1]], np.float32)
        return [[scale_face(face, factor) for face in faces] for faces in found]

    def _detect_tiled(self, image: np.ndarray) -> list[Face]:
        """Full-resolution tiles plus a downscaled overview, merged (see the class docstring)."""
        height, width = image.shape[:2]
        overview_scale = self.tile_size / max(height, width)
        # A face the overview cannot see (below `smallest_face` there) must fit whole inside one
        # tile: the tiles overlap by at least that size.
        overlap = int(np.ceil(1.5 * self.smallest_face / overview_scale))
        overlap = min(max(overlap, 2 * self.smallest_face), self.tile_size // 2)
        candidates: list[Face] = list(self._detect_scaled([image], self.tile_size)[0])
        for x0, y0, x1, y1 in tile_windows(width, height, self.tile_size, overlap):
            tile = np.ascontiguousarray(image[y0:y1, x0:x1])
            if _featureless(tile):
                continue  # a face has eyes, a mouth, edges: a flat tile cannot hold one
            for face in self._detect_raw_batch([tile])[0]:
                box = face.box
                # A face cut by an inner tile edge is found whole by the neighbouring tile.
                cut = ((box[0] <= 1 and x0 > 0) or (box[1] <= 1 and y0 > 0)
                       or (box[2] >= x1 - x0 - 1 and x1 < width)
                       or (box[3] >= y1 - y0 - 1 and y1 < height))
                if cut:
                    continue
                candidates.append(_shifted(face, x0, y0))
        return merge_faces(candidates)

    def _detect_raw_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Candidates for several images at their given size; detectors that batch override it."""
        return [self._detect_raw(image) for image in images]

    @abstractmethod
    def _detect_raw(self, image: np.ndarray) -> list[Face]:
        """All candidate faces in ``image`` at its given size, before the shared filters."""


def tile_windows(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` windows of at most ``tile`` pixels covering the image, overlapping
    by at least ``overlap`` pixels."""
    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        step = tile - overlap
        count = int(np.ceil((length - tile) / step)) + 1
        return [int(round(i * (length - tile) / (count - 1))) for i in range(count)]
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in starts(height) for x in starts(width)]


def intersection_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection area between every row of ``a (N, 4)`` and ``b (M, 4)`` → ``(N, M)``."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Area of each ``x0, y0, x1, y1`` row of ``boxes (N, 4)`` → ``(N,)``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every row of ``a (N, 4)`` and ``b (M, 4)`` → ``(N, M)``: the project's one
    box overlap (tracking, merging, the audit and the services use it)."""
    inter = intersection_matrix(a, b)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    return inter / np.maximum(union, 1e-6)


def merge_faces(faces: list[Face], iou_threshold: float = 0.3,
                containment: float = 0.7) -> list[Face]:
    """Merge detections of the same face from several passes (tiles, scales, detectors).

    Greedy by score: a box that overlaps a kept one by IoU above ``iou_threshold``, or lies
    mostly (``containment`` of the smaller area) inside it, joins that face. The merged face
    keeps the best-scored detection's score and landmarks and the *union* of the boxes — a face
    seen partly by one pass and whole by another is anonymized whole (fail closed).
    """
    if not faces:
        return []
    boxes = np.array([face.box for face in faces], np.float32)
    scores = np.array([face.score for face in faces], np.float32)
    iou = iou_matrix(boxes, boxes)
    areas = np.maximum(box_areas(boxes), 1e-6)
    contained = intersection_matrix(boxes, boxes) / np.minimum(areas[:, None], areas[None, :])
    same_face = (iou > iou_threshold) | (contained > containment)
    kept: list[int] = []
    union: dict[int, np.ndarray] = {}
    for index in np.argsort(-scores, kind="stable"):
        owner = next((leader for leader in kept if same_face[index, leader]), None)
        if owner is None:
            kept.append(int(index))
            union[int(index)] = boxes[index].copy()
        else:
            grown = union[owner]
            union[owner] = np.concatenate([np.minimum(grown[:2], boxes[index, :2]),
                                           np.maximum(grown[2:], boxes[index, 2:])])
    merged = []
    for index in kept:
        face = faces[index]
        face.box = union[index].astype(np.float32)
        merged.append(face)
    return merged


def _featureless(tile: np.ndarray, spread: int = 6) -> bool:
    """Whether every pixel of ``tile`` lies within ``spread`` grey levels of every other one
    in every channel (a uniform area: sky, a wall, padding), judged on a 4x subsample."""
    sample = tile[::4, ::4]
    return bool((sample.max(axis=(0, 1)).astype(int) - sample.min(axis=(0, 1))).max() <= spread)


def scale_face(face: Face, factor) -> Face:
    """Scale ``face``'s box and landmarks (in place) by ``factor``: a number or ``(fx, fy)``.

    Maps a detection made on a resized image back to the image's own pixels.
    """
    factor = np.broadcast_to(np.asarray(factor, np.float32), (2,))
    face.box = face.box * np.tile(factor, 2)
    if face.landmarks is not None:
        face.landmarks = face.landmarks * factor
    return face


def _shifted(face: Face, dx: float, dy: float) -> Face:
    face.box = face.box + np.array([dx, dy, dx, dy], np.float32)
    if face.landmarks is not None:
        face.landmarks = face.landmarks + np.array([dx, dy], np.float32)
    return face


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
            or image.dtype != np.uint8:
        raise TypeError("expected an (H, W, 3) uint8 RGB array, got "
                        f"{getattr(image, 'shape', type(image))} {getattr(image, 'dtype', '')}")


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip an ``x0, y0, x1, y1`` box to the image."""
    return np.array([np.clip(box[0], 0, width), np.clip(box[1], 0, height),
                     np.clip(box[2], 0, width), np.clip(box[3], 0, height)], dtype=np.float32)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of boxes kept by greedy IoU suppression, best score first (vectorised)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = boxes.T
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores)
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        inter_w = np.maximum(0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]))
        inter_h = np.maximum(0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]))
        inter = inter_w * inter_h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, dtype=np.int64)
