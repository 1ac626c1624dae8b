"""`facedeid anonymize` on files and folders: bad input, safety, metadata, modes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facedeid.cli import main
from facedeid.errors import InvalidInputError
from facedeid.io.images import read_image

FACE_CENTRE = (225, 120)  # (x, y) of the astronaut's face centre


@pytest.fixture()
def photo(tmp_path, astronaut):
    path = tmp_path / "in" / "astronaut.jpg"
    path.parent.mkdir()
    Image.fromarray(astronaut).save(path, quality=95)
    return path


def face_changed(original: np.ndarray, output: np.ndarray) -> bool:
    x, y = FACE_CENTRE
    window = (slice(y - 20, y + 20), slice(x - 20, x + 20))
    return np.abs(original[window].astype(int) - output[window]).mean() > 10


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_single_file_to_named_output(photo, tmp_path):
    out = tmp_path / "out.png"
    assert main(["anonymize", str(photo), "-o", str(out), "--method", "mosaic", "-q"]) == 0
    assert face_changed(load(photo), load(out))
    assert load(out).shape == load(photo).shape


def test_folder_is_mirrored_and_bad_files_do_not_stop_the_batch(photo, tmp_path, capsys):
    source = photo.parent
    (source / "sub").mkdir()
    Image.open(photo).save(source / "sub" / "nested.png")
    (source / "empty.jpg").write_bytes(b"")
    (source / "notes.png").write_text("this is not an image")
    data = photo.read_bytes()
    (source / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (source / "readme.txt").write_text("ignored: unknown type inside a folder")
    out = tmp_path / "out"
    code = main(["anonymize", str(source), "-o", str(out), "-q", "--json"])
    assert code == 1  # some files failed
    text = capsys.readouterr()
    assert "empty file" in text.out and "not an image" in text.out and "truncated" in text.out
    assert face_changed(load(photo), load(out / "in" / "astronaut.jpg"))
    assert face_changed(load(photo), load(out / "in" / "sub" / "nested.png"))
    sidecar = json.loads((out / "in" / "astronaut.jpg.json").read_text())
    assert sidecar["method"] == "mosaic" and len(sidecar["faces"]) == 1
    assert not list(out.rglob("*.part"))
    assert not (out / "in" / "readme.txt").exists()


def test_output_folder_inside_input_folder_is_not_walked(photo):
    source = photo.parent
    out = source / "anon"
    assert main(["anonymize", str(source), "-o", str(out), "-q"]) == 0
    assert main(["anonymize", str(source), "-o", str(out), "-q"]) == 0  # second run: same result
    assert sorted(p.name for p in out.rglob("*.jpg")) == ["astronaut.jpg"]


def test_never_overwrites_an_input(photo):
    before = photo.read_bytes()
    assert main(["anonymize", str(photo), "-o", str(photo), "-q"]) == 1
    assert main(["anonymize", str(photo), "-o", str(photo.parent), "-q"]) == 1
    assert photo.read_bytes() == before


def test_exif_and_gps_stripped_by_default_and_kept_on_request(tmp_path, astronaut):
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}  # GPS latitude
    path = tmp_path / "gps.jpg"
    Image.fromarray(astronaut).save(path, exif=exif)
    assert 0x8825 in Image.open(path).getexif()
    main(["anonymize", str(path), "-o", str(tmp_path / "plain.jpg"), "-q"])
    assert len(Image.open(tmp_path / "plain.jpg").getexif()) == 0
    main(["anonymize", str(path), "-o", str(tmp_path / "meta.jpg"), "--keep-metadata", "-q"])
    kept = Image.open(tmp_path / "meta.jpg").getexif()
    assert kept.get(0x010F) == "CameraMaker" and 0x8825 not in kept


def test_exif_orientation_is_honoured(tmp_path, astronaut):
    # Stored rotated, with orientation 6 ("rotate 90 CW to view"): upright when read.
    stored = np.ascontiguousarray(np.rot90(astronaut, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    upright = read_image(path).rgb
    assert np.abs(upright.astype(int) - astronaut).mean() < 6
    out = tmp_path / "out.jpg"
    assert main(["anonymize", str(path), "-o", str(out), "-q"]) == 0
    assert face_changed(astronaut, load(out))


def test_grayscale_rgba_and_16bit_keep_their_mode(tmp_path, astronaut):
    gray = Image.fromarray(astronaut).convert("L")
    gray.save(tmp_path / "gray.png")
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 77, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    deep = (np.asarray(gray).astype(np.uint16) * 257 + 3)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = tmp_path / "out"
    for name in ("gray.png", "rgba.png", "deep.png"):
        assert main(["anonymize", str(tmp_path / name), "-o", str(out), "-q"]) == 0
    assert Image.open(out / "gray.png").mode == "L"
    result = np.asarray(Image.open(out / "rgba.png"))
    assert result.shape[2] == 4 and (result[..., 3] == 77).all()
    assert face_changed(astronaut, result[..., :3])
    deep_out = np.asarray(Image.open(out / "deep.png"))
    assert deep_out.dtype == np.uint16
    assert deep_out[5, 5] == deep[5, 5]  # background keeps its 16-bit samples exactly
    assert abs(int(deep_out[120, 225]) - int(deep[120, 225])) > 500


def test_huge_image_refused_clearly_or_processed(tmp_path, astronaut):
    path = tmp_path / "huge.png"
    Image.new("RGB", (12000, 12000), (90, 90, 90)).save(path, compress_level=1)
    with pytest.raises(InvalidInputError, match="megapixels"):
        read_image(path, max_pixels=50_000_000)
    # Under the default budget it is processed: the face pasted in is found and anonymized.
    big = Image.open(path)
    big.paste(Image.fromarray(np.kron(astronaut, np.ones((8, 8, 1), np.uint8))), (3000, 3000))
    big.save(path, compress_level=1)
    del big
    out = tmp_path / "huge_out.png"
    code = subprocess.run([sys.executable, "-m", "facedeid", "anonymize", str(path), "-o", str(out),
                           "-q"], capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr
    result = Image.open(out)
    x, y = 3000 + FACE_CENTRE[0] * 8, 3000 + FACE_CENTRE[1] * 8
    patch = np.asarray(result.crop((x - 100, y - 100, x + 100, y + 100)))
    original = np.kron(astronaut, np.ones((8, 8, 1), np.uint8))[
        FACE_CENTRE[1] * 8 - 100:FACE_CENTRE[1] * 8 + 100, FACE_CENTRE[0] * 8 - 100:FACE_CENTRE[0] * 8 + 100]
    assert np.abs(patch.astype(int) - original).mean() > 10


def test_missing_input_and_empty_folder(tmp_path, capsys):
    assert main(["anonymize", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o"), "-q"]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["anonymize", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "-q"]) == 1
    assert "nothing to do" in capsys.readouterr().err


def test_unknown_method_and_bad_param_are_clear_errors(photo, tmp_path, capsys):
    assert main(["anonymize", str(photo), "-o", str(tmp_path / "o"), "--method", "nope"]) == 2
    assert "Available" in capsys.readouterr().err
    assert main(["anonymize", str(photo), "-o", str(tmp_path / "o"), "--param", "block_size"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_no_face_image_kept_with_a_warning(tmp_path, astronaut, capsys):
    path = tmp_path / "wall.png"
    Image.fromarray(astronaut[300:, 300:]).save(path)
    assert main(["anonymize", str(path), "-o", str(tmp_path / "out"), "-q"]) == 0
    captured = capsys.readouterr()
    assert "no face" in captured.err and "no detected face" in captured.out
    assert (tmp_path / "out" / "wall.png").exists()
    assert main(["anonymize", str(path), "-o", str(tmp_path / "skip"), "--no-face", "skip", "-q"]) == 0
    assert not (tmp_path / "skip" / "wall.png").exists()


def test_methods_command_lists_parameters(capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name in ("blindfold", "mosaic", "laplace", "cartoon", "block_size", "lam"):
        assert name in listing
    assert main(["methods", "mosaic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mosaic"]["params"][0]["default"] == 0
