"""Leak audit: prove that an anonymized output no longer shows a face of its original.

The anonymizer promises never to write an output that still shows a detected face. This module
checks that promise for a given (original, output) pair *independently of the anonymizer*:

1. A second detector searches the **original** — by default a different one from the detector
   that anonymized (dlib's HOG at full resolution, upsampled once, when the anonymizer used
   CenterFace; CenterFace when it used dlib's HOG), so one detector's blind spot is not audited
   by the same blind spot. Video is searched on every frame (``every=1``).
2. For every face found there, the **output** is judged at that same place:

   (a) *unchanged pixels*: the mean absolute difference inside the face box is below
       :data:`UNCHANGED_MEAN_DIFFERENCE` grey levels, or at least :data:`UNCHANGED_FRACTION`
       of the box's pixels are within :data:`NEAR_IDENTICAL_LEVELS` of the original;
   (b) *same identity*: dlib's recognizer embeds the output at the original's box with the
       alignment landmarks located on the original (an obfuscation that merely confuses the
       landmarker earns nothing) and its distance to the original face is below the
       recognizer's own threshold (0.6);
   (c) *cross-check*: the same detector searches the output around the face; a face found
       there, embedded where it was found, that still matches the original is an identity
       leak too (it catches a face that survived slightly shifted).

   Faces under :data:`SMALL_FACE` pixels are too small for the recognizer; (b) is replaced by
   a structural test: SSIM of the face region at or above :data:`SMALL_FACE_SSIM`.

A face-replacing method (k-Same, a generator) passes when the face there is someone else; a
face left as it was never passes.

Thresholds were measured on the first 50 test-identity images of celeba-id200 (faces of 89-107
px found by dlib-HOG; original JPEGs re-encoded, or anonymized with the built-in methods):

==========================  ==========================  ====================  ============
output                      mean |diff| in the box      pixels within 8       SSIM (grey)
==========================  ==========================  ====================  ============
JPEG q95 / q75 re-encode    0.35-1.08 / 0.00-0.48       >= 0.99               >= 0.999
JPEG q50 re-encode          2.6-6.6                     0.75-0.97             0.92-0.98
blindfold (eye band only)   12.0-44.0                   0.70-0.92             0.61-0.88
mosaic / pixelate / blur    13.3-41.1                   <= 0.57               <= 0.62
laplace (lam 0.1)           16.8-25.0                   <= 0.33               <= 0.71
==========================  ==========================  ====================  ============

So 8 grey levels separate the worst JPEG re-encode (6.6) from the mildest real change (12.0);
0.95 of near-identical pixels stays above the eye band (0.92 at most) and flags a face only a
small sticker was put on. The recognizer still matched blindfold on 47/48 faces, laplace 48/48,
and mosaic, pixelate and blur on 1-2 of 48 (the strong attacker: it knows where the face is).

Small faces (the same 20 thumbnails pasted at 20 and 30 px face width into a textured canvas,
found by CenterFace): a JPEG re-encode moves a 20-px face by up to 11.8 grey levels on average
(q50), so there (a) alone can miss it, but its SSIM stays >= 0.91 (q75: >= 0.95); mosaic, blur
and pixelate reach at most 0.43, 0.63 and 0.79. An SSIM of 0.85 therefore counts as "the face
is kept"; it also flags blindfold (up to 0.92) and laplace (up to 0.91) on some small faces,
which errs on the safe side. Such faces are reported as ``leaked-identity`` (structure kept)
unless (a) already called them unchanged.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .detection import Face, FaceDetector, create_detector, merge_faces
from .detection.base import iou_matrix
from .detection.locate import FaceLocator
from .errors import FaceDeidError, InvalidInputError, InvalidParameterError
from .evaluation.privacy import identity_distance

if TYPE_CHECKING:  # the pipeline calls this module, never the other way round at import time
    from .pipeline import Anonymizer

log = logging.getLogger(__name__)

#: Mean absolute difference (0-255 grey levels, averaged over the face box and the colour
#: channels) below which the face counts as left unchanged. JPEG q50 re-encoding: <= 6.6.
UNCHANGED_MEAN_DIFFERENCE = 8.0
#: A pixel is near-identical when its mean channel difference is at most this many levels.
NEAR_IDENTICAL_LEVELS = 8.0
#: The face counts as unchanged when this fraction of its box is near-identical
#: (the blindfold's eye band leaves at most 0.92).
UNCHANGED_FRACTION = 0.95
#: Faces whose shorter box side is below this (pixels) are not given to the recognizer.
SMALL_FACE = 40
#: For small faces: SSIM of the grey face region at or above this counts as the face kept.
SMALL_FACE_SSIM = 0.85
#: Grey-level standard deviation below which the middle of the output's face box is flat
#: (a solid mask): nothing is left to recognise there. dlib still put a black-masked dark face
#: (sunglasses, 003825.jpg) at 0.56 from its original: a match on darkness, not on identity.
FLAT_REGION_STD = 3.0
#: A face found on the output overlaps an original face when IoU is at least this.
CROSS_CHECK_IOU = 0.3
#: mean |Laplacian| (grey levels) below which a detection on the original is no face: eyes, a
#: mouth and the face's outline always leave fine detail. dlib's HOG (threshold 0) fired on
#: six smooth background blobs of a synthetic 6000x4000 photo (scores 0.02-0.16, detail
#: 1.2-1.3), while 300 CelebA test faces measured 4.05 at least (1st percentile 6.2), also
#: the six whose HOG score was below 0.25 (6.2-22.1). benchmarks/leak_suite.py, big_photo case.
FEATURELESS_DETAIL = 2.5

VERDICTS = {
    "leaked-unchanged": "the face's pixels are (nearly) as in the original",
    "leaked-identity": "pixels changed, but the face is still recognised as the same person",
    "ok": "changed, and not recognised as the original person",
}


def default_audit_detector(anonymizer_detector: str | None) -> str:
    """The detector an audit uses: a different one from the detector that anonymized."""
    return "centerface" if anonymizer_detector == "dlib-hog" else "dlib-hog"


# -- results ---------------------------------------------------------------------------------
@dataclass
class FaceFinding:
    """The verdict on one face of the original, judged on the output at the same place.

    Attributes:
        frame: video frame index (``None`` for an image).
        time: the frame's presentation time in seconds (``None`` for an image).
        box: ``x0, y0, x1, y1`` of the face in the original (display orientation).
        verdict: one of :data:`VERDICTS`.
        pixel_change: mean absolute difference in the box, 0-255 grey levels.
        unchanged_fraction: fraction of the box's pixels within :data:`NEAR_IDENTICAL_LEVELS`.
        ssim: structural similarity of the grey box (``None`` for boxes under 3 px).
        distance: recognizer distance, output at the original's place vs original
            (``None`` for faces under :data:`SMALL_FACE`).
        cross_check_distance: smallest distance of a face the detector found again on the
            output over this box (``None`` when it found none there).
        reason: one sentence a user can read.
        landmarks: ``(5, 2)`` canonical landmarks located on the original (for re-anonymizing).
        found_by: set when the audit detector missed the face and its second chance found it.
        score: the audit detector's confidence (its own scale: a low one may be a false
            detection, worth a look before acting on a leak there).
    """

    frame: int | None
    time: float | None
    box: np.ndarray
    verdict: str
    pixel_change: float
    unchanged_fraction: float
    ssim: float | None
    distance: float | None
    cross_check_distance: float | None = None
    reason: str = ""
    landmarks: np.ndarray | None = None
    found_by: str | None = None
    score: float | None = None

    @property
    def leaked(self) -> bool:
        return self.verdict != "ok"

    def to_face(self) -> Face:
        """The face as a :class:`Face` for :meth:`Anonymizer.anonymize` (original landmarks)."""
        return Face(box=self.box.copy(), score=1.0,
                    landmarks=None if self.landmarks is None else self.landmarks.copy())

    def to_dict(self) -> dict:
        def rounded(value, digits=4):
            return None if value is None else round(float(value), digits)
        out = {"box": [round(float(v), 1) for v in self.box], "verdict": self.verdict,
               "pixel_change": rounded(self.pixel_change, 2),
               "unchanged_fraction": rounded(self.unchanged_fraction),
               "ssim": rounded(self.ssim), "distance": rounded(self.distance),
               "cross_check_distance": rounded(self.cross_check_distance), "reason": self.reason}
        if self.found_by:
            out["found_by"] = self.found_by
        if self.score is not None:
            out["detector_score"] = rounded(self.score)
        if self.frame is not None:
            out = {"frame": self.frame, "time": rounded(self.time, 3), **out}
        return out


@dataclass
class FileReport:
    """The audit of one (original, output) pair.

    Attributes:
        kind: ``"image"`` or ``"video"``.
        findings: every face judged (for video: every face on every checked frame).
        status: ``"audited"``, ``"missing"`` (no output: nothing was published, not a leak),
            or ``"error"`` (the pair could not be audited; counts as unproven).
        frames, frames_checked: video frames decoded / searched for faces.
        fixed: faces re-anonymized by a ``fix`` step before this report was made.
    """

    original: str
    output: str | None
    kind: str = "image"
    detector: str = ""
    findings: list[FaceFinding] = field(default_factory=list)
    status: str = "audited"
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    frames: int | None = None
    frames_checked: int | None = None
    seconds: float = 0.0
    fixed: int = 0

    @property
    def leaks(self) -> list[FaceFinding]:
        return [finding for finding in self.findings if finding.leaked]

    @property
    def leaked(self) -> bool:
        return bool(self.leaks)

    @property
    def proven(self) -> bool:
        """No leak, and the pair was actually audited (or there is no output to leak)."""
        return self.status != "error" and not self.leaked

    def counts(self) -> dict[str, int]:
        counts = {verdict: 0 for verdict in VERDICTS}
        for finding in self.findings:
            counts[finding.verdict] += 1
        return counts

    def to_dict(self) -> dict:
        """JSON-friendly form (the ``"audit"`` entry of an anonymize sidecar).

        For video, ``ok`` findings are only counted: a clip has one per face and frame.
        """
        shown = self.findings if self.kind == "image" else self.leaks
        out = {"original": self.original, "output": self.output, "kind": self.kind,
               "detector": self.detector, "status": self.status, "leaked": self.leaked,
               "counts": self.counts(), "findings": [finding.to_dict() for finding in shown],
               "seconds": round(self.seconds, 3)}
        if self.kind == "video":
            out.update(frames=self.frames, frames_checked=self.frames_checked,
                       leaked_frames=sorted({f.frame for f in self.leaks}))
        if self.error:
            out["error"] = self.error
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.fixed:
            out["fixed"] = self.fixed
        return out


@dataclass
class AuditSummary:
    """Every file report of one audit run, and the totals a user needs first."""

    reports: list[FileReport]
    detector: str

    @property
    def leaked(self) -> bool:
        return any(report.leaked for report in self.reports)

    @property
    def proven(self) -> bool:
        return all(report.proven for report in self.reports)

    def counts(self) -> dict[str, int]:
        totals = {verdict: 0 for verdict in VERDICTS}
        for report in self.reports:
            for verdict, count in report.counts().items():
                totals[verdict] += count
        return totals

    def to_dict(self) -> dict:
        statuses: dict[str, int] = {}
        for report in self.reports:
            statuses[report.status] = statuses.get(report.status, 0) + 1
        return {"detector": self.detector, "files": len(self.reports), "by_status": statuses,
                "faces": self.counts(), "files_leaked": sum(r.leaked for r in self.reports),
                "leaked": self.leaked, "proven": self.proven,
                "seconds": round(sum(r.seconds for r in self.reports), 3),
                "reports": [report.to_dict() for report in self.reports]}


# -- measurements on one face ----------------------------------------------------------------
def _box_window(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = np.round(np.clip(box, 0, [width, height, width, height])).astype(int)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def pixel_change(original: np.ndarray, output: np.ndarray, box: np.ndarray
                 ) -> tuple[float, float, float | None]:
    """``(mean |difference|, near-identical fraction, grey SSIM)`` of ``box`` in two images.

    Args:
        original, output: ``(H, W, 3) uint8`` RGB of the same size.
        box: ``x0, y0, x1, y1`` in their pixels (clipped to the image).
    """
    from skimage.metrics import structural_similarity

    height, width = original.shape[:2]
    window = _box_window(box, width, height)
    if window is None:
        return 0.0, 1.0, None
    x0, y0, x1, y1 = window
    before = original[y0:y1, x0:x1].astype(np.float32)
    after = output[y0:y1, x0:x1].astype(np.float32)
    difference = np.abs(before - after).mean(axis=2)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    side = min(y1 - y0, x1 - x0)
    ssim = None
    if side >= 3:
        win_size = min(7, side if side % 2 else side - 1)
        ssim = float(structural_similarity(before @ luma, after @ luma, data_range=255.0,
                                           win_size=win_size))
    return (float(difference.mean()), float((difference <= NEAR_IDENTICAL_LEVELS).mean()), ssim)


def _middle_std(image: np.ndarray, box: np.ndarray) -> float:
    """Grey-level standard deviation of the middle 70% of ``box`` (the face proper, without
    the box corners an elliptical anonymized region leaves as they were)."""
    centre = (box[:2] + box[2:]) / 2
    half = (box[2:] - box[:2]) * 0.35
    height, width = image.shape[:2]
    window = _box_window(np.concatenate([centre - half, centre + half]), width, height)
    if window is None:
        return 0.0
    x0, y0, x1, y1 = window
    grey = image[y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(grey.std())


def fine_detail(image: np.ndarray, box: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey image inside ``box`` (grey levels per pixel)."""
    import cv2

    height, width = image.shape[:2]
    x0, y0, x1, y1 = [int(round(v)) for v in np.clip(box, 0, [width, height, width, height])]
    if x1 - x0 < 3 or y1 - y0 < 3:
        return float("inf")  # too small to judge: keep it (fail closed)
    grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())


class _UnionDetector(FaceDetector):
    """Several detectors searched in turn and merged: an audit may want more than one."""

    def __init__(self, detectors: list[FaceDetector]) -> None:
        super().__init__(score_threshold=0.0)
        self.detectors = detectors
        self.name = "+".join(detector.name for detector in detectors)
        self.tile_size = 1 << 30  # each member tiles on its own

    def _detect_raw(self, image: np.ndarray) -> list[Face]:
        found: list[Face] = []
        for detector in self.detectors:
            faces = detector.detect(image)
            # each member applied its own threshold; their scales are not comparable, so
            # every kept face ranks alike when duplicates are merged
            for face in faces:
                face.extra["audit_score"] = face.score
                face.score = 1.0
            found.extend(faces)
        return merge_faces(found)


def build_audit_detector(names: str | Sequence[str] | FaceDetector | None = None, *,
                         anonymizer_detector: str | None = None) -> FaceDetector:
    """The audit's detector from names (``"dlib-hog"``, ``"dlib-hog,centerface"``, a list).

    ``None`` picks :func:`default_audit_detector` of ``anonymizer_detector``. Every detector
    runs at full resolution (tiled for large images); dlib's HOG upsamples once.
    """
    if isinstance(names, FaceDetector):
        return names
    if names is None:
        names = default_audit_detector(anonymizer_detector)
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    if not names:
        raise InvalidParameterError("no audit detector named")
    try:
        detectors = [create_detector(name) for name in names]
    except ValueError as error:
        raise InvalidParameterError(str(error)) from None
    return detectors[0] if len(detectors) == 1 else _UnionDetector(detectors)


# -- the auditor -------------------------------------------------------------------------------
class LeakAuditor:
    """Models loaded once; then audits images, image files, videos and folders.

    Args:
        detector: audit detector name(s) or instance (see :func:`build_audit_detector`).
        anonymizer_detector: name of the detector that anonymized; picks the default audit
            detector (a different one).
        recognizer: registry name of the recognizer (``"dlib"``: Euclidean, threshold 0.6).
        cross_check: also search the output around each face (check (c)).
        second_chance: on an image where the audit detector finds nothing, try the other
            detector, rotations and a 2x pass (images only: far too slow for every video frame).
    """

    def __init__(self, detector: str | Sequence[str] | FaceDetector | None = None, *,
                 anonymizer_detector: str | None = None, recognizer: str = "dlib",
                 cross_check: bool = True, second_chance: bool = True) -> None:
        from .evaluation.recognizers import create_recognizer

        self.detector = build_audit_detector(detector, anonymizer_detector=anonymizer_detector)
        self.locator = FaceLocator(self.detector, second_chance=second_chance)
        self.recognizer = create_recognizer(recognizer)
        self.cross_check = bool(cross_check)

    @property
    def name(self) -> str:
        return self.detector.name

    # -- images ----------------------------------------------------------------------------
    def find_faces(self, original: np.ndarray, *, second_chance: bool = True) -> list[Face]:
        """Faces of the original, each with landmarks located on it (featureless detections,
        see :data:`FEATURELESS_DETAIL`, are dropped: they cannot show anyone)."""
        faces = self.locator.locate(original) if second_chance \
            else self.locator.complete_landmarks(original, self.detector.detect(original))
        return [face for face in faces if fine_detail(original, face.box) >= FEATURELESS_DETAIL]

    def judge(self, original: np.ndarray, output: np.ndarray, faces: Iterable[Face], *,
              frame: int | None = None, time_s: float | None = None) -> list[FaceFinding]:
        """Verdicts on ``output`` at the places of ``faces`` (found on ``original``).

        Args:
            original, output: ``(H, W, 3) uint8`` RGB, same size, display orientation.
        """
        if original.shape != output.shape:
            raise InvalidInputError(f"the output is {output.shape[1]}x{output.shape[0]}, the "
                                    f"original {original.shape[1]}x{original.shape[0]}: not the "
                                    "same picture, cannot audit it")
        faces = list(faces)
        height, width = original.shape[:2]
        findings = []
        big = [face for face in faces if min(face.width, face.height) >= SMALL_FACE
               and _box_window(face.box, width, height) is not None]
        distances = self._distances(original, output, big)
        for face in faces:
            change, unchanged, ssim = pixel_change(original, output, face.box)
            distance = distances.get(id(face))
            finding = FaceFinding(frame, time_s, face.box.copy(), "ok", change, unchanged, ssim,
                                  distance, landmarks=None if face.landmarks is None
                                  else face.landmarks.copy(), found_by=face.extra.get("found_by"),
                                  score=float(face.extra.get("audit_score", face.score)))
            self._decide(finding, small=id(face) not in distances,
                         flatness=_middle_std(output, face.box))
            findings.append(finding)
        if self.cross_check:
            self._cross_check(original, output, findings)
        return findings

    def _distances(self, original: np.ndarray, output: np.ndarray, faces: list[Face]
                   ) -> dict[int, float]:
        """Recognizer distance per face: output embedded at the original's box and landmarks."""
        if not faces:
            return {}
        boxes = [face.box for face in faces]
        embeddings = self.recognizer.embed([original] * len(faces) + [output] * len(faces),
                                           boxes + boxes, [original] * (2 * len(faces)))
        before, after = embeddings[:len(faces)], embeddings[len(faces):]
        distances = identity_distance(before, after, self.recognizer.metric)
        return {id(face): float(d) for face, d in zip(faces, distances)}

    def _decide(self, finding: FaceFinding, small: bool, flatness: float) -> None:
        if finding.pixel_change < UNCHANGED_MEAN_DIFFERENCE:
            finding.verdict = "leaked-unchanged"
            finding.reason = (f"mean pixel change {finding.pixel_change:.1f} < "
                              f"{UNCHANGED_MEAN_DIFFERENCE:g} grey levels")
        elif finding.unchanged_fraction >= UNCHANGED_FRACTION:
            finding.verdict = "leaked-unchanged"
            finding.reason = (f"{finding.unchanged_fraction:.0%} of the face's pixels unchanged "
                              f"(>= {UNCHANGED_FRACTION:.0%})")
        elif small:
            if finding.ssim is None or finding.ssim >= SMALL_FACE_SSIM:
                finding.verdict = "leaked-identity"
                finding.reason = ("face too small for the recognizer; its structure is kept "
                                  f"(SSIM {_fmt(finding.ssim)} >= {SMALL_FACE_SSIM:g})")
            else:
                finding.reason = (f"small face changed (SSIM {finding.ssim:.2f} < "
                                  f"{SMALL_FACE_SSIM:g})")
        elif finding.distance < self.recognizer.threshold and flatness >= FLAT_REGION_STD:
            finding.verdict = "leaked-identity"
            finding.reason = (f"still recognised: {self.recognizer.name} distance "
                              f"{finding.distance:.2f} < {self.recognizer.threshold:g}")
        elif finding.distance < self.recognizer.threshold:
            finding.reason = (f"the face region is flat (grey std {flatness:.1f} < "
                              f"{FLAT_REGION_STD:g}): nothing left to recognise, although "
                              f"{self.recognizer.name} gives distance {finding.distance:.2f}")
        else:
            finding.reason = (f"changed and not recognised ({self.recognizer.name} distance "
                              f"{finding.distance:.2f})")

    def _cross_check(self, original: np.ndarray, output: np.ndarray,
                     findings: list[FaceFinding]) -> None:
        """Check (c): the detector searches the output around each face; a face it finds over
        the original's box that the recognizer still matches is an identity leak."""
        height, width = output.shape[:2]
        for finding in findings:
            box = finding.box
            side_w, side_h = box[2] - box[0], box[3] - box[1]
            if min(side_w, side_h) < SMALL_FACE:
                continue
            # a window of three face sizes: enough context for the detector, cheap on 4K frames
            window = _box_window(np.array([box[0] - side_w, box[1] - side_h, box[2] + side_w,
                                           box[3] + side_h]), width, height)
            x0, y0, x1, y1 = window
            crop = np.ascontiguousarray(output[y0:y1, x0:x1])
            shift = np.array([x0, y0, x0, y0], np.float32)
            found_here = self.detector.detect(crop)
            overlaps = iou_matrix(np.array([f.box + shift for f in found_here]), box)[:, 0]
            again = [face for face, iou in zip(found_here, overlaps) if iou >= CROSS_CHECK_IOU]
            if not again:
                continue
            reference = self.recognizer.embed([original], [box], [original])
            found = self.recognizer.embed([output] * len(again), [f.box + shift for f in again])
            distance = float(identity_distance(np.repeat(reference, len(again), 0), found,
                                               self.recognizer.metric).min())
            finding.cross_check_distance = distance
            if finding.verdict == "ok" and distance < self.recognizer.threshold:
                finding.verdict = "leaked-identity"
                finding.reason = (f"found again on the output and recognised ("
                                  f"{self.recognizer.name} distance {distance:.2f} < "
                                  f"{self.recognizer.threshold:g})")

    def audit_images(self, original: np.ndarray, output: np.ndarray) -> list[FaceFinding]:
        """Find faces on ``original`` and judge ``output`` at each."""
        return self.judge(original, output, self.find_faces(original))

    def audit_image_files(self, original_path: str | Path, output_path: str | Path) -> FileReport:
        """Audit one image pair read from disk (EXIF orientation honoured on both)."""
        from .io.images import read_image

        report = FileReport(str(original_path), str(output_path), "image", self.name)
        started = time.perf_counter()
        try:
            original = read_image(original_path).rgb
            output = read_image(output_path).rgb
            faces = self.find_faces(original)
            report.findings = self.judge(original, output, faces)
            if not faces:
                report.warnings.append(f"no face found by {self.name} (second chance included): "
                                       "nothing to audit here")
        except FaceDeidError as error:
            report.status, report.error = "error", str(error)
        report.seconds = time.perf_counter() - started
        return report

    # -- video -----------------------------------------------------------------------------
    def audit_video_files(self, original_path: str | Path, output_path: str | Path, *,
                          every: int = 1, max_frames: int | None = None,
                          progress: bool = True) -> FileReport:
        """Decode both videos in lockstep and judge every ``every``-th frame.

        Frames are compared in display orientation (each file's rotation applied); findings
        carry the frame index and its time stamp in the original.
        """
        import av
        from tqdm import tqdm

        from .video.io import VideoSource

        if every < 1:
            raise InvalidParameterError("--every must be >= 1")
        report = FileReport(str(original_path), str(output_path), "video", self.name,
                            frames=0, frames_checked=0)
        started = time.perf_counter()
        bar = None
        try:
            with VideoSource(original_path) as source, VideoSource(output_path) as anonymized:
                total = source.info.frames
                if max_frames is not None and total:
                    total = min(total, max_frames)
                bar = tqdm(total=total, unit="frame", disable=not progress, leave=False,
                           desc=Path(str(original_path)).name[-24:], dynamic_ncols=True)
                originals, outputs = source.frames(), anonymized.frames()
                for index, before in enumerate(originals):
                    after = next(outputs, None)
                    if after is None:
                        report.warnings.append(f"the output ends after {index} frames, the "
                                               "original goes on (frames not in the output "
                                               "show nothing)")
                        break
                    report.frames += 1
                    if index % every == 0:
                        self._audit_frame(report, index, before, after, source, anonymized)
                    bar.update()
                    if max_frames is not None and report.frames >= max_frames:
                        break
                else:
                    if next(outputs, None) is not None:
                        report.warnings.append("the output has more frames than the original; "
                                               "the extra frames were not audited")
                for name, video in (("original", source), ("output", anonymized)):
                    if video.decode_errors:
                        report.warnings.append(f"{video.decode_errors} undecodable packet(s) "
                                               f"in the {name}")
        except (FaceDeidError, av.error.FFmpegError, OSError) as error:
            report.status, report.error = "error", str(error)
        finally:
            if bar is not None:
                bar.close()
        if every > 1:
            report.warnings.append(f"only every {every}th frame was audited (--every {every})")
        report.seconds = time.perf_counter() - started
        return report

    def _audit_frame(self, report: FileReport, index: int, before, after, source,
                     anonymized) -> None:
        from .video.io import rotate_to_display

        original = rotate_to_display(before.to_ndarray(format="rgb24"), source.info.rotation)
        output = rotate_to_display(after.to_ndarray(format="rgb24"), anonymized.info.rotation)
        time_s = (float(before.pts * before.time_base)
                  if before.pts is not None and before.time_base else None)
        faces = self.find_faces(original, second_chance=False)
        report.findings.extend(self.judge(original, output, faces, frame=index, time_s=time_s))
        report.frames_checked += 1

    # -- pairs and folders -----------------------------------------------------------------
    def audit_pair(self, original_path: str | Path, output_path: str | Path, *, every: int = 1,
                   max_frames: int | None = None, progress: bool = False) -> FileReport:
        """One original file and its output, image or video by the file suffix."""
        from .batch import VIDEO_SUFFIXES

        output_path = Path(output_path)
        if not output_path.exists():
            return FileReport(str(original_path), None, _kind_of(original_path), self.name,
                              status="missing",
                              warnings=[f"no output at {output_path}: nothing was published"])
        if Path(original_path).suffix.lower() in VIDEO_SUFFIXES:
            return self.audit_video_files(original_path, output_path, every=every,
                                          max_frames=max_frames, progress=progress)
        return self.audit_image_files(original_path, output_path)

    def audit_paths(self, original: str | Path, anonymized: str | Path, *, every: int = 1,
                    max_frames: int | None = None, progress: bool = True) -> AuditSummary:
        """Audit a file or a folder against its anonymized counterpart (see :func:`pair_paths`)."""
        from tqdm import tqdm

        pairs = pair_paths(original, anonymized)
        reports = []
        bar = tqdm(pairs, unit="file", disable=not progress or len(pairs) < 2,
                   dynamic_ncols=True)
        for source, target in bar:
            bar.set_postfix_str(Path(source).name[-30:])
            reports.append(self.audit_pair(source, target, every=every, max_frames=max_frames,
                                           progress=progress))
        bar.close()
        return AuditSummary(reports, self.name)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _kind_of(path: str | Path) -> str:
    from .batch import VIDEO_SUFFIXES
    return "video" if Path(path).suffix.lower() in VIDEO_SUFFIXES else "image"


def pair_paths(original: str | Path, anonymized: str | Path) -> list[tuple[Path, Path]]:
    """``(original file, output file)`` pairs, matched as ``facedeid anonymize`` writes them.

    A folder ORIGINAL is walked like ``anonymize`` walks it; each file's output is looked for
    at ``ANONYMIZED/<ORIGINAL folder name>/<relative path>`` (the anonymize layout), then at
    ``ANONYMIZED/<relative path>`` (a plain mirror). A file ORIGINAL pairs with ANONYMIZED
    itself when that is a file, else with ``ANONYMIZED/<file name>``. A pair whose output is
    missing is kept (reported as "missing").
    """
    from .batch import plan_jobs

    original, anonymized = Path(original), Path(anonymized)
    if not original.exists():
        raise InvalidInputError(f"{original}: no such file or folder")
    if not anonymized.exists():
        raise InvalidInputError(f"{anonymized}: no such file or folder")
    if original.resolve() == anonymized.resolve():
        raise InvalidInputError("ORIGINAL and ANONYMIZED are the same path")
    if original.is_file():
        target = anonymized if anonymized.is_file() else anonymized / original.name
        return [(original, target)]
    if anonymized.is_file():
        raise InvalidInputError(f"{original} is a folder but {anonymized} is a file")
    jobs, _ = plan_jobs([original], anonymized)
    pairs = []
    for job in jobs:
        target = job.target
        if not target.exists():
            mirror = anonymized / job.source.relative_to(original)
            target = mirror if mirror.exists() else target
        pairs.append((job.source, target))
    return pairs


# -- entry points for `facedeid anonymize --verify` ------------------------------------------
def verify_pair(original_path: str | Path, output_path: str | Path, *,
                anonymizer_detector: str | None = None,
                detector: str | Sequence[str] | FaceDetector | None = None,
                auditor: LeakAuditor | None = None, every: int = 1,
                max_frames: int | None = None, progress: bool = False) -> FileReport:
    """Audit one written output against its original (image or video).

    Pass a :class:`LeakAuditor` when auditing many files (models load once); otherwise one is
    built with ``detector`` (default: the other detector than ``anonymizer_detector``).
    """
    auditor = auditor or LeakAuditor(detector, anonymizer_detector=anonymizer_detector)
    return auditor.audit_pair(original_path, output_path, every=every, max_frames=max_frames,
                              progress=progress)


def fix_image(original_rgb: np.ndarray, anonymized_rgb: np.ndarray,
              findings: Sequence[FaceFinding], anonymizer: "Anonymizer", *,
              auditor: LeakAuditor | None = None) -> np.ndarray:
    """Re-anonymize the leaked faces of ``anonymized_rgb`` until the audit passes there.

    1. the anonymizer runs again on the output, given the leaked faces (original landmarks);
    2. a face still leaking is covered by the anonymizer's fallback method (pixelate) over its
       expanded box;
    3. a face leaking even then is filled with its region's mean colour (fail closed).

    Returns:
        A new ``(H, W, 3) uint8`` RGB array (the inputs are not modified).
    """
    leaked = [finding for finding in findings if finding.leaked]
    fixed = anonymized_rgb.copy()
    if not leaked:
        return fixed
    auditor = auditor or LeakAuditor(anonymizer_detector=anonymizer.detector.name)
    faces = [finding.to_face() for finding in leaked]
    fixed = anonymizer.anonymize(fixed, faces=faces).image
    still = _still_leaked(auditor, original_rgb, fixed, leaked)
    if still:
        _cover(fixed, still, anonymizer, use_fallback=True)
        still = _still_leaked(auditor, original_rgb, fixed, still)
    if still:
        _cover(fixed, still, anonymizer, use_fallback=False)
        log.warning("%d face(s) leaked through re-anonymization and pixelation; filled with a "
                    "flat colour", len(still))
    return fixed


def _still_leaked(auditor: LeakAuditor, original: np.ndarray, image: np.ndarray,
                  findings: Sequence[FaceFinding]) -> list[FaceFinding]:
    return [finding for finding in auditor.judge(original, image,
                                                 [f.to_face() for f in findings])
            if finding.leaked]


def _cover(image: np.ndarray, findings: Sequence[FaceFinding], anonymizer: "Anonymizer", *,
           use_fallback: bool) -> None:
    """Cover each face's expanded box in place: fallback method, or its mean colour."""
    from .alignment import box_crop, paste_back
    from .methods import FaceContext

    method = anonymizer.fallback_method()
    for index, finding in enumerate(findings):
        crop, _ = box_crop(image, finding.to_face(), expand=anonymizer.expand,
                           feather=anonymizer.feather, shape="box")
        if use_fallback:
            context = FaceContext(rng=np.random.default_rng(index), track_id=None,
                                  image_shape=image.shape[:2])
            pixels = np.asarray(method.apply(crop, context), dtype=np.uint8)
        else:
            pixels = np.empty_like(crop.pixels)
            pixels[...] = crop.pixels.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
        paste_back(image, crop, pixels)


def fix_file(original_path: str | Path, output_path: str | Path, report: FileReport,
             anonymizer: "Anonymizer", *, auditor: LeakAuditor | None = None, quality: int = 95,
             protected: Iterable[Path] = ()) -> FileReport:
    """Fix a leaking image output in place (atomically) and return its re-audit.

    The original is never written (it and ``protected`` are refused as targets). Video outputs
    are not fixed: the returned report is ``report`` with a warning saying so.
    """
    from .io.images import read_image, to_pil, write_image_atomic

    if not report.leaked:
        return report
    if report.kind == "video":
        report.warnings.append("video outputs are not fixed automatically: re-run anonymize "
                               "with a stronger method or --every 1 on this clip")
        return report
    auditor = auditor or LeakAuditor(anonymizer_detector=anonymizer.detector.name)
    original = read_image(original_path).rgb
    loaded = read_image(output_path)
    fixed = fix_image(original, loaded.rgb, report.findings, anonymizer, auditor=auditor)
    coverage = (fixed != loaded.rgb).any(axis=2).astype(np.float32)
    guarded = {Path(original_path).resolve(), *(Path(p).resolve() for p in protected)}
    write_image_atomic(output_path, to_pil(loaded, fixed, coverage), quality=quality,
                       protected=guarded)
    again = auditor.audit_image_files(original_path, output_path)
    again.fixed = len(report.leaks)
    return again


__all__ = ["FaceFinding", "FileReport", "AuditSummary", "LeakAuditor", "VERDICTS",
           "verify_pair", "fix_image", "fix_file", "pair_paths", "pixel_change",
           "build_audit_detector", "default_audit_detector", "UNCHANGED_MEAN_DIFFERENCE",
           "UNCHANGED_FRACTION", "NEAR_IDENTICAL_LEVELS", "SMALL_FACE", "SMALL_FACE_SSIM"]
