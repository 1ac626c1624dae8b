"""Image files in and out, safely.

Reading honours EXIF orientation, accepts grayscale / palette / RGBA / CMYK / 16-bit files,
refuses images above a pixel budget before decoding them, and turns every decoder failure into
an :class:`~facedeid.errors.InvalidInputError` with a readable reason. Multi-page TIFF and
animated WebP / PNG (APNG) / AVIF files are read page by page (:func:`read_image_pages`) and
written back with every page, their frame durations and loop count, so no page is ever lost.
Writing is atomic (a temporary file in the target folder, then a rename), strips EXIF and GPS
unless asked, keeps the input's mode (grey stays grey, alpha is kept, 16-bit grey stays 16-bit
outside the anonymized area) and never writes over an input file.
"""
from __future__ import annotations

import errno
import io
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import InvalidInputError

DEFAULT_MAX_PIXELS = 150_000_000  # 12000 x 12000 fits; ~1.5 GB peak while processing
_EXIF_ORIENTATION = 0x0112
_EXIF_GPS_IFD = 0x8825
_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG",
                 ".apng": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
                 ".pgm": "PPM", ".ppm": "PPM", ".pbm": "PPM", ".pnm": "PPM"}
# Formats Pillow reads and writes only when built with the codec: supported where it was.
_OPTIONAL_FORMATS = {".avif": ("AVIF", "AVIF images"), ".heic": ("HEIF", "HEIC/HEIF photos"),
                     ".heif": ("HEIF", "HEIC/HEIF photos"), ".hif": ("HEIF", "HEIC/HEIF photos"),
                     ".jxl": ("JXL", "JPEG XL images")}
Image.init()
for _suffix, (_format, _) in _OPTIONAL_FORMATS.items():
    if Image.registered_extensions().get(_suffix) == _format and _format in Image.SAVE:
        _SAVE_FORMATS[_suffix] = _format
#: Suffixes of the image files facedeid reads and writes.
IMAGE_SUFFIXES = set(_SAVE_FORMATS)

_RAW_REASON = ("camera RAW files are not decoded; export them to JPEG, PNG or TIFF first (and "
               "anonymize that export)")
#: Image-like suffixes facedeid cannot process, with the reason a user is shown.
UNSUPPORTED_IMAGE_SUFFIXES: dict[str, str] = {
    suffix: (f"{label} cannot be decoded by this installation (its Pillow has no {name} "
             "support); convert them to JPEG or PNG first")
    for suffix, (name, label) in _OPTIONAL_FORMATS.items() if suffix not in _SAVE_FORMATS}
UNSUPPORTED_IMAGE_SUFFIXES.update(
    {suffix: _RAW_REASON for suffix in (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw",
                                        ".orf", ".rw2", ".raf", ".raw", ".srw", ".pef", ".x3f")})
UNSUPPORTED_IMAGE_SUFFIXES.update({
    ".psd": "Photoshop documents are not supported; export them to PNG or TIFF first",
    ".svg": "vector drawings are not supported; export them to PNG first",
    ".jp2": "JPEG 2000 is not supported; convert to PNG or TIFF first",
    ".j2k": "JPEG 2000 is not supported; convert to PNG or TIFF first",
})
# Containers that hold several pages or animation frames, as Pillow writes them.
_MULTI_PAGE_FORMATS = {"TIFF", "WEBP", "PNG", "AVIF", "MPO"}

# Our own pixel budget replaces Pillow's decompression-bomb guard (checked before decoding).
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class LoadedImage:
    """A decoded image (one page of it) ready for the pipeline, plus what is needed to write
    it back alike.

    Attributes:
        rgb: ``(H, W, 3) uint8`` RGB, upright (EXIF orientation applied).
        mode: the file's Pillow mode (``"L"``, ``"RGBA"``, ``"I;16"``, ...).
        alpha: ``(H, W) uint8`` alpha channel, if the file had one.
        gray16: ``(H, W) uint16`` original samples of a 16-bit grey file.
        gray16_white: for ``gray16``, the sample value shown as white in ``rgb``: the full
            scale of the bits the file actually uses (1023 for 10-bit data in a 16-bit file).
        exif: the file's EXIF block (only written back with ``keep_metadata``).
        format: Pillow's name of the file format.
        duration: display time of this animation frame in milliseconds, if the file says.
        loop: the animation's loop count (0 = forever), if the file says.
    """

    rgb: np.ndarray
    mode: str
    alpha: np.ndarray | None = None
    gray16: np.ndarray | None = None
    gray16_white: int = 65535
    exif: Image.Exif | None = None
    format: str | None = None
    duration: float | None = None
    loop: int | None = None


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode ``path`` into a :class:`LoadedImage`; raise :class:`InvalidInputError` if unusable.

    Only the first page of a multi-page or animated file; :func:`read_image_pages` reads all.
    """
    return _decode(Path(path), max_pixels, all_pages=False)[0]


def read_image_pages(path: str | os.PathLike,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> list[LoadedImage]:
    """Every page of a multi-page TIFF / frame of an animated WebP, PNG or AVIF (one for others).

    ``max_pixels`` bounds the pixels of all pages together, since all are held at once.
    Animation frames come composited (each a full picture, as a viewer shows it).
    """
    return _decode(Path(path), max_pixels, all_pages=True)


def _decode(path: Path, max_pixels: int, all_pages: bool) -> list[LoadedImage]:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise InvalidInputError(f"{path}: {os_error_reason(error)}") from None
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a regular file")
    if size == 0:
        raise InvalidInputError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            count = getattr(image, "n_frames", 1) if all_pages else 1
            if width * height > max_pixels:
                raise InvalidInputError(
                    f"{path}: {width}x{height} is {width * height / 1e6:.0f} megapixels, above the "
                    f"limit of {max_pixels / 1e6:.0f} (raise it with --max-pixels)")
            if width < 1 or height < 1:
                raise InvalidInputError(f"{path}: image has no pixels")
            file_format = image.format
            exif = image.getexif()
            loop = image.info.get("loop")
            pages, total = [], 0
            for index in range(count):
                if index:
                    image.seek(index)
                total += image.size[0] * image.size[1]
                if total > max_pixels:
                    raise InvalidInputError(
                        f"{path}: its {count} pages hold more than {max_pixels / 1e6:.0f} "
                        "megapixels together, all of which must be held at once (raise it with --max-pixels)")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image.load()
                page = _to_loaded(ImageOps.exif_transpose(image), exif, file_format)
                page.duration, page.loop = image.info.get("duration"), loop
                pages.append(page)
            return pages
    except UnidentifiedImageError:
        raise InvalidInputError(f"{path}: not an image file (or an unsupported format)") from None
    except InvalidInputError:
        raise
    except PermissionError as error:
        raise InvalidInputError(f"{path}: {os_error_reason(error)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidInputError(f"{path}: corrupt or truncated image ({error})") from None


def os_error_reason(error: OSError) -> str:
    """A short reason for an ``OSError`` on an input path, in words a user acts on."""
    if error.errno == errno.ELOOP:
        return "symbolic link loop (the link points back at itself)"
    if error.errno == errno.ENOENT:
        return "no such file"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "cannot read it: permission denied"
    return f"cannot read it: {error.strerror or error}"


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Same as :func:`read_image` for an in-memory file (used by services)."""
    with tempfile.NamedTemporaryFile(suffix=".img") as handle:
        handle.write(data)
        handle.flush()
        return read_image(handle.name, max_pixels)


def _to_loaded(image: Image.Image, exif: Image.Exif, file_format: str | None) -> LoadedImage:
    mode = image.mode
    alpha = gray16 = None
    white = 65535
    if mode.startswith("I;16") or mode == "I":
        samples = np.asarray(image)
        gray16 = np.clip(samples, 0, 65535).astype(np.uint16)
        # Scientific and medical files often fill only the low 10-12 bits of 16: taking the
        # high byte would show the detector a black picture, so scale by the bits in use.
        white = gray16_white_level(gray16)
        rgb = np.repeat(_gray16_to_8bit(gray16, white)[..., None], 3, axis=2)
        mode = "I;16"
    else:
        if "A" in image.getbands() or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            alpha = np.asarray(rgba)[..., 3].copy()
            rgb = np.asarray(rgba)[..., :3].copy()
        else:
            rgb = np.asarray(image.convert("RGB")).copy()
    return LoadedImage(rgb=np.ascontiguousarray(rgb), mode=mode, alpha=alpha, gray16=gray16,
                       gray16_white=white, exif=exif, format=file_format)


def gray16_white_level(samples: np.ndarray) -> int:
    """Full scale of the bits 16-bit samples really use: ``2**bits - 1``, at least 255."""
    bits = max(8, int(samples.max(initial=0)).bit_length())
    return (1 << bits) - 1


def _gray16_to_8bit(samples: np.ndarray, white: int) -> np.ndarray:
    return np.clip(np.rint(samples.astype(np.float32) * (255.0 / white)), 0, 255).astype(np.uint8)


def to_pil(loaded: LoadedImage, rgb: np.ndarray, coverage: np.ndarray | None = None) -> Image.Image:
    """Package a processed RGB array in the original file's mode.

    A 16-bit grey page keeps its original samples wherever ``coverage`` is 0 and takes the
    processed grey, scaled back to the file's range, where the face was replaced.
    """
    if loaded.gray16 is not None:
        gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) \
            * (loaded.gray16_white / 255.0)
        weight = coverage if coverage is not None else np.ones(gray.shape, np.float32)
        merged = loaded.gray16 * (1 - weight) + gray * weight
        return Image.fromarray(np.clip(np.rint(merged), 0, 65535).astype(np.uint16))
    image = Image.fromarray(rgb)
    if loaded.alpha is not None:
        image = Image.fromarray(np.dstack([rgb, loaded.alpha]))
    elif loaded.mode in ("L", "1", "LA"):
        image = image.convert("L")
    return image


def clean_exif(exif: Image.Exif | None, keep_gps: bool) -> bytes | None:
    """EXIF to write back under ``keep_metadata``: orientation reset (pixels are upright now)."""
    if exif is None or len(exif) == 0:
        return None
    if _EXIF_ORIENTATION in exif:
        exif[_EXIF_ORIENTATION] = 1
    if not keep_gps and _EXIF_GPS_IFD in exif:
        del exif[_EXIF_GPS_IFD]
    return exif.tobytes()


def save_format_for(path: Path) -> str:
    try:
        return _SAVE_FORMATS[path.suffix.lower()]
    except KeyError:
        raise InvalidInputError(
            f"{path}: cannot write this file type; use one of {', '.join(sorted(_SAVE_FORMATS))}") from None


def write_image_atomic(path: str | os.PathLike, image: Image.Image, *, exif: bytes | None = None,
                       quality: int = 95, protected: set[Path] | frozenset = frozenset()) -> Path:
    """Write ``image`` to ``path`` through a temporary file and a rename.

    Args:
        exif: EXIF bytes to embed; ``None`` (the default everywhere) writes no metadata.
        protected: resolved input paths that must never be overwritten.
    """
    return write_pages_atomic(path, [image], exif=exif, quality=quality, protected=protected)


def write_pages_atomic(path: str | os.PathLike, pages: Sequence[Image.Image], *,
                       durations: Sequence[float] | None = None, loop: int | None = None,
                       exif: bytes | None = None, quality: int = 95,
                       protected: set[Path] | frozenset = frozenset()) -> Path:
    """Write one or more pages as one file (multi-page TIFF, animated WebP/PNG/AVIF), atomically.

    Args:
        durations: per-frame display times in milliseconds, for animations.
        loop: animation loop count (0 = forever), as the input had it.
        exif, quality, protected: as :func:`write_image_atomic`.

    Raises:
        InvalidInputError: several pages for a file type that holds one (nothing is written:
            dropping pages silently would lose them).
    """
    path = Path(path)
    file_format = save_format_for(path)
    if len(pages) > 1 and file_format == "JPEG":
        file_format = "MPO"  # JPEG's own multi-picture form; viewers show the first picture
    if len(pages) > 1 and file_format not in _MULTI_PAGE_FORMATS:
        raise InvalidInputError(
            f"{path}: the input has {len(pages)} pages/frames but a {path.suffix} file holds one; "
            "write .tif (pages) or .webp / .png (animations) so that none is lost")
    images = [_for_format(page, file_format) for page in pages]
    if len(images) > 1 and file_format != "TIFF" and len({image.mode for image in images}) > 1:
        # one animation has one mode: give every frame alpha if any frame has it
        images = [image.convert("RGBA") for image in images]
    options: dict = {}
    if file_format in ("JPEG", "MPO", "WEBP", "AVIF"):
        options["quality"] = quality
    if exif and file_format in ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "AVIF"):
        options["exif"] = exif
    if len(images) > 1:
        options.update(save_all=True, append_images=images[1:])
        if durations is not None and file_format in ("WEBP", "PNG", "AVIF"):
            options["duration"] = [int(round(d)) for d in durations]
        if loop is not None and file_format in ("WEBP", "PNG", "AVIF"):
            options["loop"] = loop
    buffer = io.BytesIO()
    images[0].save(buffer, format=file_format, **options)
    return write_bytes_atomic(path, buffer.getbuffer(), protected=protected)


def _for_format(image: Image.Image, file_format: str) -> Image.Image:
    """Convert a page to a mode the format can store."""
    if file_format in ("JPEG", "MPO") and image.mode not in ("RGB", "L"):
        if image.mode == "I;16":
            return _gray16_image_to_8bit(image)
        return image.convert("RGB")  # JPEG has no alpha and no 16-bit
    if file_format in ("BMP", "WEBP", "PPM", "AVIF") and image.mode == "I;16":
        return _gray16_image_to_8bit(image)
    return image


def _gray16_image_to_8bit(image: Image.Image) -> Image.Image:
    samples = np.asarray(image)
    return Image.fromarray(_gray16_to_8bit(samples, gray16_white_level(samples)))


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview, *,
                       protected: set[Path] | frozenset = frozenset()) -> Path:
    """Write ``data`` to ``path`` through a hidden temporary file beside it and a rename.

    The temporary file is removed on every failure (disk full, ``EFBIG``, Ctrl-C, SIGTERM turned
    into an exception by the CLI), so no partial file is ever left under any name.

    Args:
        protected: resolved input paths that must never be overwritten.
    """
    path = Path(path)
    if Path(os.path.realpath(path)) in protected:
        raise InvalidInputError(f"{path}: refusing to overwrite an input file")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part",
                                                 dir=path.parent)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise
    return path
