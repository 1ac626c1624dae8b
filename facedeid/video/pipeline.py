"""Video de-identification: decode → detect every k frames → track → anonymize → encode.

Memory is bounded by the detection interval: frames wait in a buffer only until the next
detection frame tells the tracker where each face went (``every`` frames at most). Frames
without any face are re-encoded straight from the decoder's YUV frame, with no RGB round trip.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..detection import Face
from ..errors import InvalidInputError, InvalidParameterError
from ..pipeline import Anonymizer
from .io import VideoInfo, VideoSink, VideoSource, rotate_to_display, rotate_to_storage
from .tracking import FaceTracker

log = logging.getLogger(__name__)


@dataclass
class VideoOptions:
    """Knobs of :func:`anonymize_video` (the CLI's "video" argument group).

    Attributes:
        every: run the detector on every k-th frame; the tracker fills the rest.
        det_scale: longest side (pixels) the frame is scaled to for detection; ``None`` = full.
        threshold: detector score that starts a new face track (the tracker keeps matched
            faces down to ``keep_threshold``).
        keep_threshold: weaker detections still continue an existing track.
        max_gap: frames a face stays anonymized at its predicted place after the detector
            last saw it.
        grow: relative growth of a face's mask per frame it goes undetected.
        codec, crf, preset: encoder, quality, speed (see ``ffmpeg -h encoder=libx264``). The
            default preset favours throughput; ``veryfast`` makes files about a third smaller
            for about a quarter more CPU per frame (docs/benchmarks.md).
        audio: copy the audio streams (packets remuxed unchanged) or drop them.
        boxes_out: write per-frame boxes and track ids as JSON here.
        boxes_in: JSON file (the ``boxes_out`` format) of the user's own detections; the
            detector is not run.
        progress: show a progress bar with fps and ETA.
        max_frames: stop after this many frames (live sources, previews).
    """

    every: int = 6
    det_scale: int | None = 512
    threshold: float = 0.35
    keep_threshold: float = 0.15
    max_gap: int = 15
    grow: float = 0.04
    codec: str | None = None
    crf: int = 20
    preset: str = "ultrafast"
    audio: bool = True
    boxes_out: Path | None = None
    boxes_in: Path | None = None
    progress: bool = True
    max_frames: int | None = None

    def validate(self) -> None:
        if self.every < 1:
            raise InvalidParameterError("--every must be >= 1")
        if self.det_scale is not None and self.det_scale < 32:
            raise InvalidParameterError("--det-scale must be >= 32 pixels (or 0 for full size)")
        if self.max_gap < 0:
            raise InvalidParameterError("--max-gap must be >= 0")
        if not 0 <= self.crf <= 63:
            raise InvalidParameterError("--crf must be in 0..63")
        if not 0 < self.threshold <= 1 or not 0 < self.keep_threshold <= self.threshold:
            raise InvalidParameterError("need 0 < keep threshold <= threshold <= 1")


@dataclass
class VideoReport:
    """What happened to one video."""

    source: str
    target: str | None
    frames: int
    tracks: int
    frames_with_faces: int
    detection_frames: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    audio_packets: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _FrameDetector:
    """Detections on one frame at a reduced scale, mapped back to full-resolution pixels."""

    def __init__(self, anonymizer: Anonymizer, options: VideoOptions) -> None:
        from ..detection.centerface import CenterFaceDetector

        self.anonymizer = anonymizer
        self.detector = anonymizer.detector
        self.centerface = isinstance(self.detector, CenterFaceDetector)
        self.det_scale = options.det_scale or None
        self.floor = options.keep_threshold

    def __call__(self, frame: av.VideoFrame, rotation: int) -> list[Face]:
        width, height = frame.width, frame.height
        scale = 1.0
        if self.det_scale and max(width, height) > self.det_scale:
            scale = self.det_scale / max(width, height)
        if self.centerface:  # resize straight from YUV to the network's multiple-of-32 size
            det_w = max(32, int(round(width * scale / 32)) * 32)
            det_h = max(32, int(round(height * scale / 32)) * 32)
        else:
            det_w, det_h = max(1, round(width * scale)), max(1, round(height * scale))
        small = frame.reformat(width=det_w, height=det_h, format="rgb24",
                               interpolation="AREA" if scale < 1 else "BILINEAR").to_ndarray()
        small = rotate_to_display(small, rotation)
        if self.centerface:
            saved = self.detector.max_side
            self.detector.max_side = None
            try:
                faces = self.detector.detect_batch([small], raw=True)[0]
            finally:
                self.detector.max_side = saved
            faces = [f for f in faces if f.score >= self.floor
                     and min(f.width, f.height) >= self.detector.min_face_size * det_w / width]
        else:
            faces = self.detector.detect(small)
        display_w, display_h = (height, width) if rotation % 180 else (width, height)
        sx = display_w / small.shape[1]
        sy = display_h / small.shape[0]
        for face in faces:
            face.box = face.box * np.array([sx, sy, sx, sy], np.float32)
            if face.landmarks is not None:
                face.landmarks = face.landmarks * np.array([sx, sy], np.float32)
        return faces


def _load_boxes(path: Path) -> dict[int, list[Face]]:
    """``--boxes-in``: the ``--boxes-out`` JSON (or a bare list of frame entries)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"cannot read boxes from {path}: {error}") from error
    entries = data.get("frames", []) if isinstance(data, dict) else data
    boxes: dict[int, list[Face]] = {}
    try:
        for entry in entries:
            faces = [Face.from_dict(item) for item in entry.get("faces", [])]
            for face in faces:
                face.score = max(face.score, 1.0)  # the user's boxes are trusted detections
            boxes[int(entry["frame"])] = faces
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInputError(f"{path}: expected {{'frames': [{{'frame': i, 'faces': "
                                f"[{{'box': [x0, y0, x1, y1]}}, ...]}}, ...]}} ({error})") from error
    return boxes


class _BoxWriter:
    """Streams the per-frame boxes JSON (one frame per line) to a temp file, then renames."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.temp = self.path.with_name(f".{self.path.name}.partial-{secrets.token_hex(4)}")
        self.handle = open(self.temp, "w")
        head = json.dumps(header)[:-1]
        self.handle.write(head + (', ' if header else '') + '"frames": [\n')
        self.first = True

    def write(self, index: int, time_s: float | None, faces: list[Face]) -> None:
        entry = {"frame": index, "time": None if time_s is None else round(time_s, 4),
                 "faces": [dict(face.to_dict(), state=face.extra.get("state", "detected"))
                           for face in faces]}
        self.handle.write(("" if self.first else ",\n") + json.dumps(entry))
        self.first = False

    def commit(self) -> None:
        self.handle.write("\n]}\n")
        self.handle.close()
        os.replace(self.temp, self.path)

    def abort(self) -> None:
        self.handle.close()
        self.temp.unlink(missing_ok=True)


def anonymize_video(source: str | os.PathLike, target: str | os.PathLike, anonymizer: Anonymizer,
                    options: VideoOptions | None = None, *, protected: set[Path] | None = None,
                    no_face: str | None = None) -> VideoReport:
    """De-identify every face in a video file, webcam or stream; write ``target`` atomically.

    Args:
        source: video file, webcam index (``"0"``) or stream URL.
        target: output file; its suffix picks the container (``.mp4``, ``.mkv``, ``.gif``, ...).
        anonymizer: a built :class:`~facedeid.pipeline.Anonymizer` (method + detector).
        protected: resolved paths that must never be written (the inputs).
        no_face: the no-face policy (defaults to the anonymizer's): ``keep`` writes a video in
            which nothing was found, ``skip`` writes none, ``obfuscate`` obfuscates every frame
            without a face.

    Raises:
        InvalidInputError: unreadable, corrupt or frameless input.
    """
    options = options or VideoOptions()
    options.validate()
    target = Path(target)
    if protected and target.resolve() in protected:
        raise InvalidParameterError(f"refusing to overwrite the input {target}")
    no_face = no_face or anonymizer.no_face
    # A track must keep one replacement identity: seed per (video seed, track id), even when
    # the user gave no seed (then a fresh one per video, so frames of one track agree).
    anonymizer = copy.copy(anonymizer)
    if anonymizer.seed is None:
        anonymizer.seed = secrets.randbits(32)
    given_boxes = _load_boxes(options.boxes_in) if options.boxes_in else None
    detect = None if given_boxes is not None else _FrameDetector(anonymizer, options)
    started = time.perf_counter()
    warnings: list[str] = []
    with VideoSource(source) as video:
        info = video.info
        state = _RunState(video, target, anonymizer, options, no_face, given_boxes, detect)
        try:
            state.run()
        except BaseException:  # errors and Ctrl-C alike: no partial file under any name
            state.abort()
            raise
        if state.frames == 0:
            state.abort()
            raise InvalidInputError(f"{source}: no video frame could be decoded (empty, truncated "
                                    "or corrupt file)")
        if video.decode_errors:
            warnings.append(f"{video.decode_errors} corrupt packet(s) skipped; the input may be "
                            "truncated or damaged")
        announced = video.video.frames  # the header's count, not an estimate from duration
        if announced and not info.live and state.frames < 0.98 * announced - 1:
            warnings.append(f"decoded {state.frames} of the {announced} frames the header "
                            "announces; the file may be truncated")
        if state.tracker.track_count == 0:
            warnings.append("no face found in any frame; check the video by eye before publishing")
        written = state.finish(skip=(state.tracker.track_count == 0 and no_face == "skip"))
    return VideoReport(str(source), str(written) if written else None, state.frames,
                       state.tracker.track_count, state.frames_with_faces, state.detections,
                       time.perf_counter() - started, warnings, state.audio_packets)


class _RunState:
    """The streaming loop's state; split out so errors can abort the temp files cleanly."""

    def __init__(self, video: VideoSource, target: Path, anonymizer: Anonymizer,
                 options: VideoOptions, no_face: str, given_boxes, detect) -> None:
        self.video, self.target, self.anonymizer = video, target, anonymizer
        self.options, self.no_face = options, no_face
        self.given_boxes, self.detect = given_boxes, detect
        self.sink: VideoSink | None = None
        self.boxes: _BoxWriter | None = None
        self.pending_audio: list[av.Packet] = []
        self.buffer: deque[tuple[int, av.VideoFrame]] = deque()
        self.frames = 0
        self.frames_with_faces = 0
        self.detections = 0
        self.audio_packets = 0
        self.tracker: FaceTracker | None = None
        self.progress = None
        # Bounded memory with sparse --boxes-in: past this many waiting frames the tracker
        # steps without a detection (it coasts) instead of buffering further.
        self.max_buffer = max(options.every, options.max_gap, 1)

    # -- audio -------------------------------------------------------------------------
    def _audio(self, packet: av.Packet) -> None:
        if self.sink is None:
            self.pending_audio.append(packet)  # until the first frame fixes the output setup
        else:
            self.sink.mux_audio(packet)
        self.audio_packets += 1

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        from tqdm import tqdm

        info = self.video.info
        self.progress = tqdm(total=info.frames, unit="frame", disable=not self.options.progress,
                             dynamic_ncols=True, desc=Path(str(self.video.spec)).name[-24:],
                             leave=False)
        audio_sink = self._audio if self.options.audio and self.video.audio else None
        limit = self.options.max_frames
        try:
            for frame in self.video.frames(audio_sink):
                index = self.frames
                if index == 0:
                    self._open_outputs()
                self.frames += 1
                self.buffer.append((index, frame))
                if self._is_detection_frame(index) or len(self.buffer) > self.max_buffer:
                    self._detect_and_flush(index, frame)
                if limit is not None and self.frames >= limit:
                    break
        except KeyboardInterrupt:
            if not info.live or self.sink is None:
                raise
            log.info("live capture stopped by the user after %d frames", self.frames)
        if self.buffer:  # close the last interval: detect on the final frame, fill the rest
            index, frame = self.buffer[-1]
            if not self._is_detection_frame(index):
                self._detect_and_flush(index, frame)

    def _open_outputs(self) -> None:
        info = self.video.info
        # Faces are tracked in display (upright) coordinates, where the detector works.
        width, height = (info.height, info.width) if info.rotation % 180 else (info.width, info.height)
        self.tracker = FaceTracker(width, height, max_gap=self.options.max_gap,
                                   birth_score=self.options.threshold,
                                   keep_score=self.options.keep_threshold,
                                   grow_per_frame=self.options.grow)
        self.sink = VideoSink(self.target, info,
                              audio_streams=self.video.audio if self.options.audio else (),
                              codec=self.options.codec, crf=self.options.crf,
                              preset=self.options.preset)
        for packet in self.pending_audio:
            self.sink.mux_audio(packet)
        self.pending_audio.clear()
        if self.options.boxes_out:
            self.boxes = _BoxWriter(self.options.boxes_out, {
                "source": str(self.video.spec), "width": width, "height": height,
                "rotation": info.rotation, "time_base": str(info.time_base),
                "method": self.anonymizer.method.name})

    def _is_detection_frame(self, index: int) -> bool:
        if self.given_boxes is not None:
            return index in self.given_boxes
        return index % self.options.every == 0

    def _detect_and_flush(self, index: int, frame: av.VideoFrame) -> None:
        if self.given_boxes is not None:
            faces = [copy.deepcopy(face) for face in self.given_boxes.get(index, [])]
        else:
            faces = self.detect(frame, self.video.info.rotation)
        self.detections += 1
        per_frame = self.tracker.step(index, faces)
        while self.buffer:
            buffered_index, buffered = self.buffer.popleft()
            self._emit(buffered_index, buffered, per_frame.get(buffered_index, []))

    def _emit(self, index: int, frame: av.VideoFrame, faces: list[Face]) -> None:
        rotation = self.video.info.rotation
        if faces or self.no_face == "obfuscate":
            image = rotate_to_display(frame.to_ndarray(format="rgb24"), rotation)
            result = self.anonymizer.anonymize(image, faces=faces)
            if faces:
                self.frames_with_faces += 1
            out = av.VideoFrame.from_ndarray(rotate_to_storage(result.image, rotation),
                                             format="rgb24")
            out.pts, out.time_base = frame.pts, frame.time_base
            if frame.duration:
                out.duration = frame.duration
        else:
            out = frame  # untouched: skip the RGB round trip entirely
        self.sink.write(out)
        if self.boxes is not None:
            time_s = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base \
                else None
            self.boxes.write(index, time_s, faces)
        self.progress.update()

    # -- endings -------------------------------------------------------------------------
    def finish(self, skip: bool) -> Path | None:
        self.progress.close()
        if skip:
            self.abort()
            return None
        if self.boxes is not None:
            self.boxes.commit()
        return self.sink.commit()

    def abort(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.sink is not None:
            self.sink.abort()
        if self.boxes is not None:
            self.boxes.abort()


def options_from_args(args) -> VideoOptions:
    """Build :class:`VideoOptions` from the CLI namespace (absent options keep defaults)."""
    defaults = VideoOptions()
    get = lambda name: getattr(args, name, None)  # noqa: E731
    det_scale = get("det_scale")
    return VideoOptions(
        every=get("every") or defaults.every,
        det_scale=defaults.det_scale if det_scale is None else (det_scale or None),
        threshold=get("video_threshold") or defaults.threshold,
        max_gap=defaults.max_gap if get("max_gap") is None else get("max_gap"),
        codec=get("codec"), crf=defaults.crf if get("crf") is None else get("crf"),
        preset=get("preset") or defaults.preset, audio=not get("no_audio"),
        boxes_out=Path(get("boxes_out")) if get("boxes_out") else None,
        boxes_in=Path(get("boxes_in")) if get("boxes_in") else None,
        progress=not get("quiet"), max_frames=get("max_frames"))


def anonymize_video_job(job, anonymizer: Anonymizer, args, *, protected: set[Path]):
    """CLI entry point: one video job → a :class:`facedeid.batch.Outcome` (never raises)."""
    from ..batch import Outcome
    from ..errors import FaceDeidError

    options = options_from_args(args)
    if options.boxes_out is not None and options.boxes_out.is_dir():  # several videos, one folder
        options.boxes_out = options.boxes_out / f"{Path(job.target).name}.boxes.json"
    try:
        report = anonymize_video(str(job.source), job.target, anonymizer, options,
                                 protected=protected)
    except FaceDeidError as error:
        return Outcome(str(job.source), None, "failed", error=str(error))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        log.debug("video %s failed", job.source, exc_info=True)
        return Outcome(str(job.source), None, "failed", error=f"{type(error).__name__}: {error}")
    status = "anonymized" if report.tracks else ("skipped" if report.target is None else "kept")
    log.info("%s: %d frames, %d face track(s), %.1f fps", job.source, report.frames,
             report.tracks, report.fps)
    return Outcome(str(job.source), report.target, status, report.tracks,
                   warnings=list(report.warnings))


__all__ = ["VideoOptions", "VideoReport", "anonymize_video", "anonymize_video_job",
           "options_from_args", "VideoInfo"]
