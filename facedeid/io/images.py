"""Image files in and out, safely.

Reading honours EXIF orientation, accepts grayscale / palette / RGBA / CMYK / 16-bit files,
refuses images above a pixel budget before decoding them, and turns every decoder failure into
an :class:`~facedeid.errors.InvalidInputError` with a readable reason. Writing is atomic (a
temporary file in the target folder, then a rename), strips EXIF and GPS unless asked, keeps
the input's mode (grey stays grey, alpha is kept, 16-bit grey stays 16-bit outside the
anonymized area) and never writes over an input file.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import InvalidInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                  ".pbm", ".pnm"}
DEFAULT_MAX_PIXELS = 150_000_000  # 12000 x 12000 fits; ~1.5 GB peak while processing
_EXIF_ORIENTATION = 0x0112
_EXIF_GPS_IFD = 0x8825
_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".webp": "WEBP", ".pgm": "PPM", ".ppm": "PPM", ".pbm": "PPM",
                 ".pnm": "PPM"}

# Our own pixel budget replaces Pillow's decompression-bomb guard (checked before decoding).
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class LoadedImage:
    """A decoded image ready for the pipeline, plus what is needed to write it back alike.

    Attributes:
        rgb: ``(H, W, 3) uint8`` RGB, upright (EXIF orientation applied).
        mode: the file's Pillow mode (``"L"``, ``"RGBA"``, ``"I;16"``, ...).
        alpha: ``(H, W) uint8`` alpha channel, if the file had one.
        gray16: ``(H, W) uint16`` original samples of a 16-bit grey file.
        exif: the file's EXIF block (only written back with ``keep_metadata``).
        format: Pillow's name of the file format.
    """

    rgb: np.ndarray
    mode: str
    alpha: np.ndarray | None = None
    gray16: np.ndarray | None = None
    exif: Image.Exif | None = None
    format: str | None = None


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode ``path`` into a :class:`LoadedImage`; raise :class:`InvalidInputError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidInputError(
                    f"{path}: {width}x{height} is {width * height / 1e6:.0f} megapixels, above the "
                    f"limit of {max_pixels / 1e6:.0f} (raise it with --max-pixels)")
            if width < 1 or height < 1:
                raise InvalidInputError(f"{path}: image has no pixels")
            file_format = image.format
            exif = image.getexif()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.load()
            image = ImageOps.exif_transpose(image)
            return _to_loaded(image, exif, file_format)
    except UnidentifiedImageError:
        raise InvalidInputError(f"{path}: not an image file (or an unsupported format)") from None
    except InvalidInputError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidInputError(f"{path}: corrupt or truncated image ({error})") from None


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Same as :func:`read_image` for an in-memory file (used by services)."""
    with tempfile.NamedTemporaryFile(suffix=".img") as handle:
        handle.write(data)
        handle.flush()
        return read_image(handle.name, max_pixels)


def _to_loaded(image: Image.Image, exif: Image.Exif, file_format: str | None) -> LoadedImage:
    mode = image.mode
    alpha = gray16 = None
    if mode.startswith("I;16") or mode == "I":
        samples = np.asarray(image)
        gray16 = np.clip(samples, 0, 65535).astype(np.uint16)
        gray8 = (gray16 >> 8).astype(np.uint8)
        rgb = np.repeat(gray8[..., None], 3, axis=2)
        mode = "I;16"
    else:
        if "A" in image.getbands() or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            alpha = np.asarray(rgba)[..., 3].copy()
            rgb = np.asarray(rgba)[..., :3].copy()
        else:
            rgb = np.asarray(image.convert("RGB")).copy()
    return LoadedImage(rgb=np.ascontiguousarray(rgb), mode=mode, alpha=alpha, gray16=gray16,
                       exif=exif, format=file_format)


def to_pil(loaded: LoadedImage, rgb: np.ndarray, coverage: np.ndarray | None = None) -> Image.Image:
    """Package a processed RGB array in the original file's mode."""
    if loaded.gray16 is not None:
        gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) * 257.0
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
    path = Path(path)
    if path.resolve() in protected:
        raise InvalidInputError(f"{path}: refusing to overwrite an input file")
    file_format = save_format_for(path)
    if file_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha and no 16-bit
    if file_format in ("JPEG", "BMP", "WEBP", "PPM") and image.mode == "I;16":
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    options: dict = {}
    if file_format in ("JPEG", "WEBP"):
        options["quality"] = quality
    if exif and file_format in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["exif"] = exif
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            buffer = io.BytesIO()
            image.save(buffer, format=file_format, **options)
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
