"""Uploads: streamed to a private temporary folder under a size cap, then identified by their
content (never by the name or content type the client claims).

A client's file name is kept only as text to show back; every file on disk gets a name this
module makes up, so no path a client sends is ever used as a path.
"""
from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import InvalidInputError
from ..io.images import save_format_for

log = logging.getLogger(__name__)

#: Form fields (not files) in one request, and the size of one field's text.
MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
#: Pillow format name -> suffix the result is written with (each format writes back as itself).
_IMAGE_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif",
                   "BMP": ".bmp", "PPM": ".ppm", "AVIF": ".avif", "HEIF": ".heic", "JXL": ".jxl"}
#: FFmpeg demuxer name (first of its aliases) -> container suffix of the result.
_VIDEO_SUFFIXES = {"mov": ".mp4", "matroska": ".mkv", "avi": ".avi", "gif": ".gif"}


class ServiceError(HTTPException):
    """An HTTP error whose message a user can act on (JSON ``{"detail": ...}``)."""


@dataclass
class UploadedFile:
    """One file of a request, on disk under a made-up name.

    Attributes:
        path: where it is (inside the request's private folder).
        client_name: the name the client gave, for display only (never a path).
        size: bytes received.
        kind, suffix, format: filled by :func:`identify`: ``"image"`` or ``"video"``, the
            suffix results are written with, and the decoder's name for the format.
    """

    path: Path
    client_name: str
    size: int = 0
    kind: str = ""
    suffix: str = ""
    format: str = ""
    frames: int | None = None


@dataclass
class ReceivedForm:
    """The fields and files of one multipart request."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)


def new_workspace(root: Path | None) -> Path:
    """A private folder (mode 0700) for one request or job."""
    return Path(tempfile.mkdtemp(prefix="facedeid-service-", dir=root))


def remove_workspace(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def display_name(raw: str) -> str:
    """The client's file name reduced to something safe to echo in JSON and headers."""
    base = re.split(r"[\\/]", raw)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")[:80]
    return cleaned or "upload"


class _FormCollector:
    """python-multipart callbacks: text fields to memory, files to the workspace."""

    def __init__(self, folder: Path, max_files: int) -> None:
        self.folder, self.max_files = folder, max_files
        self.form = ReceivedForm()
        self.error: ServiceError | None = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._field_name: str | None = None
        self._field_value = bytearray()
        self._file: UploadedFile | None = None
        self._handle = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def fail(self, status: int, message: str) -> None:
        if self.error is None:
            self.error = ServiceError(status, message)

    def part_begin(self) -> None:
        self._headers, self._field_name, self._file = {}, None, None
        self._field_value = bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field, self._header_value = b"", b""

    def headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            self.fail(400, "each multipart part needs Content-Disposition: form-data; name=...")
            return
        self._field_name = name.decode("utf-8", "replace")
        if b"filename" not in options:
            if len(self.form.fields) >= MAX_FIELDS:
                self.fail(400, f"more than {MAX_FIELDS} form fields")
            return
        if len(self.form.files) >= self.max_files:
            self.fail(413, f"more than {self.max_files} files in one request")
            return
        # the part's own Content-Type is ignored: the content decides (see identify)
        path = self.folder / f"{secrets.token_hex(6)}-{len(self.form.files):03d}.upload"
        client_name = display_name(options[b"filename"].decode("utf-8", "replace"))
        self._file = UploadedFile(path, client_name)
        self._handle = open(path, "xb")
        self.form.files.append(self._file)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._file is not None:
            self._handle.write(data[start:end])
            self._file.size += end - start
        elif self._field_name is not None:
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                self.fail(413, f"form field {self._field_name!r} is longer than "
                               f"{MAX_FIELD_BYTES} bytes")

    def part_end(self) -> None:
        if self._file is not None:
            self.close()
        elif self._field_name is not None and self.error is None:
            self.form.fields[self._field_name] = self._field_value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


async def receive_form(request: Request, folder: Path, *, max_bytes: int,
                       max_files: int) -> ReceivedForm:
    """Stream a ``multipart/form-data`` body into ``folder``, stopping at ``max_bytes``.

    Raises:
        ServiceError: 415 not multipart; 413 over the cap (declared or received); 400 a
            malformed body.
        starlette.requests.ClientDisconnect: the client went away (the caller removes
            ``folder``).
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        sent = content_type.decode("latin-1") or "no content type"
        raise ServiceError(415, "send the file as multipart/form-data (a form with a 'file' "
                                f"field), not {sent}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise ServiceError(400, "multipart/form-data without a boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ServiceError(413, _too_large(max_bytes))
    collector = _FormCollector(folder, max_files)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ServiceError(413, _too_large(max_bytes))
            parser.write(chunk)
            if collector.error is not None:
                raise collector.error
        parser.finalize()
    except FormParserError:
        raise ServiceError(400, "malformed multipart/form-data body") from None
    finally:
        collector.close()
    if collector.error is not None:
        raise collector.error
    return collector.form


def _too_large(max_bytes: int) -> str:
    return f"upload larger than the limit of {max_bytes / 1024 / 1024:g} MB (--max-upload-mb)"


def identify(upload: UploadedFile, max_pixels: int, max_video_frames: int) -> UploadedFile:
    """Find what ``upload`` is from its bytes, refuse what the pipeline cannot take, and give
    the file the suffix its format is written back with.

    The image decoder is tried first (its header check is cheap), then FFmpeg. Pixel budgets
    are checked on the header, before anything is decoded: the CLI's limit for images
    (all pages together), the same for one video frame.

    Raises:
        ServiceError: 400 empty file or a damaged header; 413 too many pixels or frames;
            415 neither an image nor a video facedeid can write back.
    """
    from PIL import Image, UnidentifiedImageError

    if upload.size == 0:
        raise ServiceError(400, f"{upload.client_name}: empty file (0 bytes)")
    try:
        with Image.open(upload.path) as image:
            file_format, (width, height) = image.format, image.size
            pages = getattr(image, "n_frames", 1)
    except UnidentifiedImageError:
        file_format = None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ServiceError(400, f"{upload.client_name}: corrupt or truncated image "
                                f"({_scrub(error, upload)})") from None
    if file_format is not None and file_format != "GIF":  # animated GIFs are videos to facedeid
        suffix = _IMAGE_SUFFIXES.get(file_format)
        if suffix is None or not _writable(suffix):
            raise ServiceError(415, f"{upload.client_name}: {file_format} images are not "
                                    "supported; send JPEG, PNG, WebP, TIFF or BMP")
        if width * height * pages > max_pixels:
            raise ServiceError(413, f"{upload.client_name}: {width}x{height} pixels"
                                    + (f" x {pages} pages" if pages > 1 else "")
                                    + f" is above the limit of {max_pixels / 1e6:.0f} megapixels")
        return _settle(upload, "image", suffix, file_format)
    return _identify_video(upload, max_pixels, max_video_frames)


def _identify_video(upload: UploadedFile, max_pixels: int, max_video_frames: int) -> UploadedFile:
    import av

    from ..video.io import VideoSource

    try:
        with VideoSource(upload.path, live=False) as video:
            demuxer = video.container.format.name.split(",")[0]
            info = video.info
    except (InvalidInputError, av.error.FFmpegError, OSError, ValueError):
        raise ServiceError(415, f"{upload.client_name}: not an image or video facedeid can read "
                                "(the content decides, not the file name)") from None
    if info.width * info.height > max_pixels:
        raise ServiceError(413, f"{upload.client_name}: video frames of {info.width}x"
                                f"{info.height} are above the limit of {max_pixels / 1e6:.0f} "
                                "megapixels")
    if info.frames is not None and info.frames > max_video_frames:
        raise ServiceError(413, f"{upload.client_name}: {info.frames} frames is above the "
                                f"service's limit of {max_video_frames} per video")
    upload = _settle(upload, "video", _VIDEO_SUFFIXES.get(demuxer, ".mp4"), demuxer)
    upload.frames = info.frames
    return upload


def _settle(upload: UploadedFile, kind: str, suffix: str, file_format: str) -> UploadedFile:
    target = upload.path.with_suffix(suffix)
    upload.path.rename(target)
    upload.path, upload.kind, upload.suffix, upload.format = target, kind, suffix, file_format
    return upload


def _writable(suffix: str) -> bool:
    try:
        save_format_for(Path("x" + suffix))
    except InvalidInputError:
        return False
    return True


def _scrub(message: object, upload: UploadedFile) -> str:
    """``message`` without the server-side path of the upload (replaced by the client's name)."""
    text = str(message)
    for path in (upload.path, upload.path.parent):
        text = text.replace(str(path), upload.client_name)
    return text


def scrub_paths(message: object, uploads: list[UploadedFile], folder: Path) -> str:
    """An error message fit for a client: no server-side path in it."""
    text = str(message)
    for upload in uploads:
        text = _scrub(text, upload)
    return text.replace(str(folder), "(upload)")


__all__ = ["ServiceError", "UploadedFile", "ReceivedForm", "receive_form", "identify",
           "new_workspace", "remove_workspace", "display_name", "scrub_paths"]
