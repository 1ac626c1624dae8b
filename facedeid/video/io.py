"""Streaming video input/output on PyAV: decode frame by frame, re-encode, copy audio untouched.

Why PyAV and not ``cv2.VideoCapture`` / an ``ffmpeg`` subprocess: PyAV ships its own FFmpeg,
gives us the demuxed *packets* (so audio can be remuxed byte for byte instead of re-encoded),
the exact timestamps of every frame (so variable frame rate and duration survive) and the
display-matrix rotation. Memory stays bounded: one decoded frame is alive at a time, plus the
codec's own look-ahead and the muxer's interleaving queue.

Sources are files, webcam indices (``"0"``) and stream URLs (``rtsp://``, ``http(s)://``, ...).
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np

from ..errors import InvalidInputError, InvalidParameterError

log = logging.getLogger(__name__)

URL_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: Output containers that hold H.264; others (``.gif``) pick their own codec.
DEFAULT_CODECS = {".gif": "gif", ".webm": "libvpx-vp9"}
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
           "veryslow")


def is_live_source(spec: str | os.PathLike) -> bool:
    """A webcam index (``"0"``) or a URL, as opposed to a file on disk."""
    text = str(spec)
    if Path(text).exists():
        return False
    return text.isdigit() or bool(URL_PATTERN.match(text))


def _open_input(spec: str, live: bool):
    """``av.open`` for a file, a webcam index or a URL, with errors a user can act on."""
    options: dict[str, str] = {}
    fmt = None
    target = spec
    if live and spec.isdigit():
        if sys.platform.startswith("linux"):
            fmt, target = "v4l2", f"/dev/video{spec}"
        elif sys.platform == "darwin":
            fmt, target = "avfoundation", f"{spec}:none"
        else:
            fmt, target = "dshow", f"video={spec}"
    elif live:
        options = {"rw_timeout": "15000000"}  # microseconds: a dead stream fails instead of hanging
    try:
        return av.open(target, format=fmt, options=options, timeout=(15.0, 15.0) if live else None)
    except av.error.FileNotFoundError as error:
        raise InvalidInputError(f"cannot open {spec!r}: {error}. Check the path, webcam index "
                                "or URL") from error
    except (av.error.InvalidDataError, av.error.FFmpegError) as error:
        raise InvalidInputError(f"cannot read {spec!r} as a video ({error}); the file may be "
                                "truncated, corrupt or not a video") from error


@dataclass
class VideoInfo:
    """What the output must preserve about the input.

    Attributes:
        width, height: stored frame size (before rotation is applied for display).
        rotation: counter-clockwise display rotation in degrees (0, 90, 180, 270).
        rate: nominal frame rate (``None`` if unknown); the real timing is each frame's pts.
        time_base: the video stream's time base; output frames keep the input pts in it.
        frames: frame count from the header, if any (an estimate for progress bars).
        duration: seconds, if known.
        audio_codecs: codec names of the audio streams that will be copied.
    """

    width: int
    height: int
    rotation: int
    rate: Fraction | None
    time_base: Fraction
    frames: int | None
    duration: float | None
    codec: str
    audio_codecs: list[str] = field(default_factory=list)
    live: bool = False
    #: colour description of the video stream (primaries, transfer, matrix, range), copied to
    #: the output so players show the same colours.
    colour: dict[str, int] = field(default_factory=dict)
    #: the video stream's metadata tags worth keeping (language, title).
    tags: dict[str, str] = field(default_factory=dict)


class VideoSource:
    """Demux a video source once, decoding video frames and handing audio packets on as-is.

    Use as a context manager; iterate :meth:`frames` to get ``av.VideoFrame`` objects in
    presentation order. Audio packets are passed to ``audio_sink(packet)`` as they are demuxed.
    """

    def __init__(self, spec: str | os.PathLike, live: bool | None = None, threads: int = 0):
        self.spec = str(spec)
        self.live = is_live_source(spec) if live is None else live
        self.container = _open_input(self.spec, self.live)
        if not self.container.streams.video:
            self.container.close()
            raise InvalidInputError(f"{self.spec!r} has no video stream")
        self.video = self.container.streams.video[0]
        self.video.thread_type = "AUTO"  # frame + slice threads in the decoder
        if threads:
            self.video.codec_context.thread_count = threads
        self.audio = list(self.container.streams.audio)
        self.decode_errors = 0
        self._first_rotation: int | None = None
        ctx = self.video.codec_context
        if not ctx.width or not ctx.height:
            self.container.close()
            raise InvalidInputError(f"{self.spec!r}: the video stream has no frame size; the file "
                                    "is probably truncated or corrupt")
        rate = self.video.average_rate or self.video.guessed_rate or self.video.base_rate
        duration = None
        if self.video.duration is not None and self.video.time_base:
            duration = float(self.video.duration * self.video.time_base)
        elif self.container.duration:
            duration = self.container.duration / av.time_base
        frames = self.video.frames or (int(round(duration * rate)) if duration and rate else None)
        self.info = VideoInfo(width=ctx.width, height=ctx.height, rotation=0,
                              rate=Fraction(rate) if rate else None,
                              time_base=self.video.time_base or Fraction(1, 90000),
                              frames=frames or None, duration=duration, codec=ctx.name,
                              audio_codecs=[s.codec_context.name for s in self.audio],
                              live=self.live, colour=_colour_of(ctx),
                              tags=_kept_tags(self.video.metadata))

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def frames(self, audio_sink: Callable[[av.Packet], None] | None = None) -> Iterator[av.VideoFrame]:
        """Decoded video frames; corrupt packets are skipped and counted in ``decode_errors``."""
        streams = [self.video] + (self.audio if audio_sink is not None else [])
        try:
            for packet in self.container.demux(streams):
                if packet.stream.type == "audio":
                    if packet.dts is not None and packet.size:  # flush packets carry no data
                        audio_sink(packet)
                    continue
                yield from self._decode(packet)
        except av.error.FFmpegError as error:  # the container itself broke off (truncation)
            self.decode_errors += 1
            log.debug("demuxing %s stopped: %s", self.spec, error)
        yield from self._decode(None)  # drain the decoder

    def _decode(self, packet) -> Iterator[av.VideoFrame]:
        try:
            frames = self.video.decode(packet)
        except av.error.EOFError:  # the demuxer's own flush packet already drained it
            return
        except av.error.FFmpegError as error:
            self.decode_errors += 1
            log.debug("skipping an undecodable packet in %s: %s", self.spec, error)
            return
        for frame in frames:
            if self._first_rotation is None:
                self._first_rotation = int(round(frame.rotation)) % 360
                self.info.rotation = self._first_rotation
            yield frame


#: Codec-context attributes that describe how the stored values map to colours.
COLOUR_FIELDS = ("color_primaries", "color_trc", "colorspace", "color_range")
KEPT_TAGS = ("language", "title")


def _colour_of(ctx) -> dict[str, int]:
    """The stream's colour description, leaving out what it leaves unspecified (2 / 0)."""
    colour = {}
    for name in COLOUR_FIELDS:
        value = getattr(ctx, name, None)
        unspecified = 0 if name == "color_range" else 2
        if value is not None and int(value) != unspecified:
            colour[name] = int(value)
    return colour


def _kept_tags(metadata) -> dict[str, str]:
    return {key: value for key, value in dict(metadata or {}).items() if key in KEPT_TAGS}


def _even(value: int) -> bool:
    return value % 2 == 0


class VideoSink:
    """Encode frames into a temporary file beside ``target``; :meth:`commit` renames it.

    The temporary name starts with a dot and never equals ``target``, so an interrupted run
    leaves no half-written file under the final name (and :meth:`abort` removes the temp file).

    Args:
        target: final output path; its suffix picks the container.
        info: the source's :class:`VideoInfo` (size, time base, rate, rotation).
        audio_streams: input audio streams to copy (packets are remuxed, never re-encoded).
        codec: video encoder (default ``libx264``; ``gif`` for ``.gif`` targets).
        crf: constant rate factor (quality; lower is better) for encoders that take one.
        preset: encoder speed preset (x264/x265 names).
    """

    def __init__(self, target: Path, info: VideoInfo, audio_streams=(), codec: str | None = None,
                 crf: int = 20, preset: str = "ultrafast", threads: int = 0):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.temp = self.target.with_name(
            f".{self.target.stem}.partial-{secrets.token_hex(4)}{self.target.suffix}")
        suffix = self.target.suffix.lower()
        codec = codec or DEFAULT_CODECS.get(suffix, "libx264")
        if preset not in PRESETS and codec in ("libx264", "libx265"):
            raise InvalidParameterError(f"--preset must be one of {', '.join(PRESETS)}")
        self.info = info
        self.gif = codec == "gif"
        try:
            self.container = av.open(str(self.temp), "w", format=_container_format(suffix))
        except (av.error.FFmpegError, ValueError) as error:
            raise InvalidParameterError(f"cannot write {self.target.suffix!r} files: {error}; "
                                        "use .mp4, .mkv, .mov, .avi or .gif") from error
        try:
            self._setup_video(codec, crf, preset, threads)
            self.audio_map = {}
            for stream in audio_streams:
                copied = self.container.add_stream_from_template(stream)
                copied.metadata.update(_kept_tags(stream.metadata))
                self.audio_map[stream.index] = copied
            try:
                self.container.start_encoding()  # fail now, not midway, on a bad combination
            except av.error.FFmpegError as error:
                raise InvalidParameterError(
                    f"cannot store {codec} video with {[s.codec_context.name for s in audio_streams]}"
                    f" audio in a {suffix} file ({error}); write .mkv, or drop audio "
                    "(--no-audio)") from error
        except Exception:
            self.abort()
            raise
        self._last_pts: int | None = None
        self.frames_written = 0

    def _setup_video(self, codec: str, crf: int, preset: str, threads: int) -> None:
        info = self.info
        rate = info.rate if info.rate else Fraction(30)
        try:
            stream = self.container.add_stream(codec, rate=rate)
        except (av.error.FFmpegError, ValueError) as error:
            raise InvalidParameterError(f"unknown or unusable video codec {codec!r}: {error}") from error
        stream.width, stream.height = info.width, info.height
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        if self.gif:
            stream.pix_fmt = "pal8"
        elif _even(info.width) and _even(info.height):
            stream.pix_fmt = "yuv420p"
        else:
            # 4:2:0 needs even sides; 4:4:4 keeps odd sizes exact instead of cropping a pixel.
            stream.pix_fmt = "yuv444p"
            log.info("odd frame size %dx%d: encoding yuv444p", info.width, info.height)
        supported = [f.name for f in (stream.codec_context.codec.video_formats or [])]
        if supported and stream.pix_fmt not in supported:
            # e.g. libx264rgb (lossless RGB): take the encoder's own, preferring RGB ones
            stream.pix_fmt = next((f for f in ("rgb24", "yuv444p", "yuv420p") if f in supported),
                                  supported[0])
        options = {}
        if codec in ("libx264", "libx265", "libx264rgb"):
            options = {"crf": str(crf), "preset": preset}
        elif codec.startswith("libvpx"):
            options = {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8"}
        stream.codec_context.options = options
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        if not self.gif and stream.pix_fmt.startswith("yuv"):
            for name, value in info.colour.items():
                try:
                    setattr(stream.codec_context, name, value)
                except (AttributeError, ValueError, TypeError):
                    log.debug("cannot copy %s=%s to the output", name, value)
        stream.metadata.update(info.tags)
        self.video = stream
        self._palette = _GifPalette(info, stream) if self.gif else None

    def mux_audio(self, packet: av.Packet) -> None:
        """Copy one demuxed audio packet into the output unchanged."""
        out_stream = self.audio_map.get(packet.stream.index)
        if out_stream is None:
            return
        packet.stream = out_stream
        self.container.mux(packet)

    def write(self, frame: av.VideoFrame) -> None:
        """Encode one frame (its pts in the input time base; repaired to be increasing)."""
        pts = frame.pts
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + 1
        frame.pts = pts
        frame.time_base = self.info.time_base
        # A decoded frame carries the input's picture type, which x264 would obey: an input
        # without B-frames would force P-frames everywhere (bigger files). Let it choose.
        frame.pict_type = av.video.frame.PictureType.NONE
        self._last_pts = pts
        if self._palette is not None:
            frames = self._palette.convert(frame)
        else:
            frames = [frame]
        for item in frames:
            self.container.mux(self.video.encode(item))
        self.frames_written += 1

    def commit(self) -> Path:
        """Flush the encoder, close the file and move it to the final name."""
        if self._palette is not None:
            for item in self._palette.flush():
                self.container.mux(self.video.encode(item))
        self.container.mux(self.video.encode(None))
        self.container.close()
        os.replace(self.temp, self.target)
        return self.target

    def abort(self) -> None:
        """Close and delete the temporary file (after an error or an interrupt)."""
        try:
            self.container.close()
        except Exception:  # closing a half-initialised container may fail; the unlink matters
            log.debug("closing %s failed", self.temp, exc_info=True)
        self.temp.unlink(missing_ok=True)


def _container_format(suffix: str) -> str | None:
    return {".mkv": "matroska", ".mov": "mov", ".mp4": "mp4", ".m4v": "mp4", ".avi": "avi",
            ".gif": "gif", ".webm": "webm"}.get(suffix)


class _GifPalette:
    """Per-frame palettes for GIF output (FFmpeg's palettegen/paletteuse, streaming).

    The GIF encoder takes only 8-bit palettised frames; one palette per frame keeps colours
    right without buffering the whole clip for a global palette.
    """

    def __init__(self, info: VideoInfo, stream) -> None:
        graph = av.filter.Graph()
        source = graph.add_buffer(width=info.width, height=info.height, format="rgb24",
                                  time_base=info.time_base)
        split = graph.add("split")
        generate = graph.add("palettegen", "stats_mode=single")
        use = graph.add("paletteuse", "new=1")
        sink = graph.add("buffersink")
        source.link_to(split)
        split.link_to(use, 0, 0)
        split.link_to(generate, 1, 0)
        generate.link_to(use, 0, 1)
        use.link_to(sink)
        graph.configure()
        self.graph = graph

    def convert(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        if frame.format.name != "rgb24":
            pts, time_base = frame.pts, frame.time_base
            frame = frame.reformat(format="rgb24")
            frame.pts, frame.time_base = pts, time_base
        self.graph.push(frame)
        return self._pull()

    def flush(self) -> list[av.VideoFrame]:
        self.graph.push(None)
        return self._pull()

    def _pull(self) -> list[av.VideoFrame]:
        out = []
        while True:
            try:
                out.append(self.graph.pull())
            except (av.error.BlockingIOError, av.error.EOFError):
                return out


def rotate_to_display(image: np.ndarray, rotation: int) -> np.ndarray:
    """Stored ``(H, W, 3)`` frame → upright as a player shows it (``rotation`` ccw degrees)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def rotate_to_storage(image: np.ndarray, rotation: int) -> np.ndarray:
    """Inverse of :func:`rotate_to_display`."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, -turns)) if turns else image


__all__ = ["VideoSource", "VideoSink", "VideoInfo", "is_live_source", "rotate_to_display",
           "rotate_to_storage", "PRESETS"]
