"""Carry faces across frames: match detections to tracks, fill the frames between and after them.

Written here rather than taken from a tracking library (SORT/ByteTrack ports) because the goal
differs: a privacy tracker must *fail closed*. Every rule below errs towards anonymizing more:

* a face size is smoothed over time but never drawn smaller than the current detection;
* frames between two detections of a track get the interpolated box plus a margin that grows
  with how far the face moved;
* a track that the detector misses keeps being anonymized for up to ``max_gap`` frames at its
  predicted position, its box growing every frame while its whereabouts are uncertain;
* a new track is also drawn, grown, on the buffered frames *before* its first detection
  (it was probably there, undetected).

Matching is one-to-one on IoU with the Hungarian algorithm (scipy), gated by the predicted box.
All boxes are ``(4,)`` float32 ``x0, y0, x1, y1`` in full-resolution pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..detection import Face
from ..detection.base import iou_matrix


def _size(box: np.ndarray) -> np.ndarray:
    return np.maximum(box[2:] - box[:2], 1.0)


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def _from_centre(centre: np.ndarray, size: np.ndarray) -> np.ndarray:
    return np.concatenate([centre - size / 2, centre + size / 2]).astype(np.float32)


def _grow(box: np.ndarray, factor: float, margin: float = 0.0) -> np.ndarray:
    return _from_centre(_centre(box), _size(box) * factor + 2 * margin)


@dataclass
class Track:
    """One face over time. ``box`` is the (size-smoothed) box at frame ``last_seen``."""

    track_id: int
    box: np.ndarray
    landmarks_rel: np.ndarray | None  # (5, 2) landmarks as fractions of the box
    velocity: np.ndarray  # (2,) centre motion in pixels per frame
    last_seen: int
    first_seen: int
    score: float
    hits: int = 1

    def predicted(self, frame: int) -> np.ndarray:
        """Box at ``frame`` extrapolated with constant velocity (not yet grown)."""
        return _from_centre(_centre(self.box) + self.velocity * (frame - self.last_seen),
                            _size(self.box))

    def landmarks_for(self, box: np.ndarray) -> np.ndarray | None:
        if self.landmarks_rel is None:
            return None
        return self.landmarks_rel * _size(box) + box[:2]


class FaceTracker:
    """Turn sparse, noisy detections into a box for every face on every frame.

    Call :meth:`step` on each *detection frame* (in increasing order) with its detections; it
    returns the faces for every frame since the previous detection frame, up to and including
    this one, so the caller buffers those frames meanwhile (at most the detection interval).

    Args:
        max_gap: frames a track survives without a matching detection (filled by prediction).
        birth_score: a detection needs this score to start a new track.
        keep_score: a weaker detection still continues an existing track (fail closed: a
            low-confidence face that matches a known face is anonymized, not dropped).
        smoothing: weight of the new detection in the size average (1 = no smoothing).
        grow_per_frame: relative box growth per frame a track goes undetected.
        max_growth: cap on that growth (1.0 = up to twice the size).
        match_iou: minimum IoU between a predicted track box and a detection to match them.
        width, height: frame size, to clip boxes.
    """

    def __init__(self, width: int, height: int, max_gap: int = 15, birth_score: float = 0.4,
                 keep_score: float = 0.15, smoothing: float = 0.6, grow_per_frame: float = 0.04,
                 max_growth: float = 1.0, match_iou: float = 0.1) -> None:
        if max_gap < 0:
            raise ValueError("max_gap must be >= 0")
        self.width, self.height = width, height
        self.max_gap = max_gap
        self.birth_score, self.keep_score = birth_score, keep_score
        self.smoothing = smoothing
        self.grow_per_frame, self.max_growth = grow_per_frame, max_growth
        self.match_iou = match_iou
        self.tracks: list[Track] = []
        self.next_id = 0
        self.last_frame = -1
        self.track_count = 0

    # -- public ----------------------------------------------------------------------------
    def step(self, frame: int, detections: list[Face],
             backfill_since: int | None = None) -> dict[int, list[Face]]:
        """Faces for every frame in ``(previous detection frame, frame]``.

        Args:
            backfill_since: a track born at this step is also drawn (grown) on the frames
                ``backfill_since .. previous detection frame``, which the caller still holds:
                a face first found by a sparse full-resolution search was probably there,
                too small for the cheaper searches, since the previous full-resolution one.
                Those frames appear in the result as extra keys; merge them into what earlier
                steps returned.
        """
        if frame <= self.last_frame:
            raise ValueError(f"detection frames must increase ({frame} after {self.last_frame})")
        previous = self.last_frame
        before = {t.track_id: Track(**vars(t)) for t in self.tracks}  # snapshot at `previous`
        matched, born = self._update(frame, [d for d in detections if d.score >= self.keep_score])
        out: dict[int, list[Face]] = {i: [] for i in range(previous + 1, frame + 1)}
        for track in self.tracks:
            old = before.get(track.track_id)
            for index in range(previous + 1, frame):
                box, landmarks, state = self._between(track, old, index, frame,
                                                      track.track_id in matched)
                self._emit(out[index], track, box, landmarks, state)
            if track.track_id in matched or track.track_id in born:
                self._emit(out[frame], track, track.box, track.landmarks_for(track.box), "detected")
            else:
                box, landmarks = self._coast(track, frame)
                self._emit(out[frame], track, box, landmarks, "coasting")
        # Tracks lost at this step still cover the buffered frames up to their gap limit.
        for track_id, old in before.items():
            if any(t.track_id == track_id for t in self.tracks):
                continue
            for index in range(previous + 1, min(frame, old.last_seen + self.max_gap + 1)):
                box, landmarks = self._coast(old, index)
                self._emit(out[index], old, box, landmarks, "coasting")
        if backfill_since is not None:
            for track in self.tracks:
                if track.track_id not in born:
                    continue
                for index in range(max(backfill_since, 0), previous + 1):
                    box, landmarks, _ = self._between(track, None, index, frame, False)
                    self._emit(out.setdefault(index, []), track, box, landmarks, "backfilled")
        self.last_frame = frame
        return out

    def flush_frames(self, frames: range) -> dict[int, list[Face]]:
        """Faces for trailing frames after the last detection frame (coasting only)."""
        out = {}
        for index in frames:
            out[index] = []
            for track in self.tracks:
                if index - track.last_seen <= self.max_gap:
                    box, landmarks = self._coast(track, index)
                    self._emit(out[index], track, box, landmarks, "coasting")
        return out

    def regions(self, frame: int) -> list[np.ndarray]:
        """Where the live tracks are expected on ``frame``: predicted boxes, grown as coasting
        would draw them (what a caller may treat as already covered)."""
        return [self._coast(track, frame)[0] for track in self.tracks
                if frame - track.last_seen <= self.max_gap]

    def frames_unseen(self, frame: int) -> int:
        """Frames since the detector last saw the least recently seen live track (0: none)."""
        return max((frame - track.last_seen for track in self.tracks
                    if frame - track.last_seen <= self.max_gap), default=0)

    # -- internals -------------------------------------------------------------------------
    def _update(self, frame: int, detections: list[Face]) -> tuple[set[int], set[int]]:
        predicted = np.array([t.predicted(frame) for t in self.tracks], np.float32).reshape(-1, 4)
        # Gate against the grown prediction so that a fast or long-unseen face still matches.
        gated = np.array([_grow(p, self._growth(frame - t.last_seen)) for p, t
                          in zip(predicted, self.tracks)], np.float32).reshape(-1, 4)
        boxes = np.array([d.box for d in detections], np.float32).reshape(-1, 4)
        iou = np.maximum(iou_matrix(predicted, boxes), iou_matrix(gated, boxes))
        matched: set[int] = set()
        used: set[int] = set()
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            for row, col in zip(rows, cols):
                if iou[row, col] >= self.match_iou:
                    self._absorb(self.tracks[row], detections[col], frame)
                    matched.add(self.tracks[row].track_id)
                    used.add(col)
        self.tracks = [t for t in self.tracks if frame - t.last_seen <= self.max_gap]
        born: set[int] = set()
        for index, detection in enumerate(detections):
            if index in used or detection.score < self.birth_score:
                continue
            track = Track(self.next_id, detection.box.copy(), _relative(detection), np.zeros(2),
                          frame, frame, detection.score)
            self.next_id += 1
            self.track_count += 1
            self.tracks.append(track)
            born.add(track.track_id)
        return matched, born

    def _absorb(self, track: Track, detection: Face, frame: int) -> None:
        elapsed = max(frame - track.last_seen, 1)
        motion = (_centre(detection.box) - _centre(track.box)) / elapsed
        track.velocity = motion if track.hits == 1 else 0.5 * motion + 0.5 * track.velocity
        size = self.smoothing * _size(detection.box) + (1 - self.smoothing) * _size(track.box)
        size = np.maximum(size, _size(detection.box))  # smoothing may enlarge, never shrink
        track.box = _from_centre(_centre(detection.box), size)
        relative = _relative(detection)
        if relative is not None:
            track.landmarks_rel = relative
        track.last_seen = frame
        track.score = detection.score
        track.hits += 1

    def _growth(self, frames_unseen: int) -> float:
        return 1.0 + min(self.grow_per_frame * max(frames_unseen, 0), self.max_growth)

    def _coast(self, track: Track, frame: int) -> tuple[np.ndarray, np.ndarray | None]:
        centre_box = track.predicted(frame)
        return _grow(centre_box, self._growth(frame - track.last_seen)), \
            track.landmarks_for(centre_box)

    def _between(self, track: Track, old: Track | None, index: int, frame: int,
                 matched: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
        if old is not None and matched:  # seen at both ends: interpolate, pad by the motion
            t = (index - old.last_seen) / max(frame - old.last_seen, 1)
            box = (1 - t) * old.box + t * track.box
            moved = np.abs(_centre(track.box) - _centre(old.box)).max()
            unseen = min(index - old.last_seen, frame - index)
            # Half the motion on each side: the box covers both ends' positions whatever the
            # path between them (a face swinging back and forth is not where the line says).
            margin = 0.5 * moved + 0.02 * float(_size(box).max())
            grown = _grow(box, self._growth(unseen) ** 0.5, margin)
            landmarks = None
            if old.landmarks_rel is not None and track.landmarks_rel is not None:
                landmarks = ((1 - t) * old.landmarks_rel + t * track.landmarks_rel) * _size(box) \
                    + box[:2]
            return grown, landmarks, "interpolated"
        if old is not None:  # missed at this detection frame: coast from the earlier state
            box, landmarks = self._coast(old, index)
            return box, landmarks, "coasting"
        # Born at `frame`: it was probably already there while undetected; cover it, grown.
        box = _grow(track.box, self._growth(frame - index))
        return box, track.landmarks_for(track.box), "backfilled"

    def _emit(self, faces: list[Face], track: Track, box: np.ndarray,
              landmarks: np.ndarray | None, state: str) -> None:
        clipped = np.clip(box, 0, [self.width, self.height, self.width, self.height])
        if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
            return
        if landmarks is not None:
            landmarks = landmarks.astype(np.float32)
        # Box-space methods use the (grown) box; aligned methods use the landmarks, which
        # follow the predicted motion but are not inflated.
        faces.append(Face(box=clipped, score=track.score, landmarks=landmarks,
                          track_id=track.track_id, extra={"state": state}))


def _relative(face: Face) -> np.ndarray | None:
    if face.landmarks is None or not np.isfinite(face.landmarks).all():
        return None
    return ((face.landmarks - face.box[:2]) / _size(face.box)).astype(np.float32)


__all__ = ["FaceTracker", "Track", "iou_matrix"]
