"""`facedeid anonymize` loses nothing and leaves nothing: inputs never overwritten (also through
--summary, --boxes-out, sidecars, `..` and globs), no partial or hidden file left on disk full,
SIGTERM or a failing video, every file of a folder accounted for, every page of a multi-page or
animated image processed, and the summary naming every file to check by eye.

Each case builds its own inputs; the cases that need a real face use a CelebA crop from the
shared data and skip when it is absent.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from facedeid.cli import main
from facedeid.io.images import read_image

from .conftest import REPO, shared_path

FAST = ["--method", "mask", "--landmarks", "box", "-q"]
FACE_WINDOW = (slice(95, 165), slice(55, 125))  # (rows, cols) inside a 178x218 CelebA crop


# -- helpers ---------------------------------------------------------------------------------
def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``root`` (symlinks not followed)."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and not path.is_symlink()}


def leftovers(root: Path) -> list[Path]:
    """Hidden or partial files: what an interrupted or failed write could leave behind."""
    if not root.exists():
        return []
    return [path for path in root.rglob("*")
            if path.name.startswith(".") or ".part" in path.name]


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def save_noise(path: Path, size: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(size, size, seed)).save(path)
    return path


def make_clip(path: Path, frames: int = 12, width: int = 64, height: int = 48,
              crf: int = 10) -> Path:
    """A faceless noise clip (no shared data needed): large for its length, so writes are big."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": str(crf)}
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(noise(height, width, index), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def celeba_face() -> np.ndarray:
    """A real aligned CelebA face, ``(218, 178, 3)`` uint8; skips without the shared data."""
    folder = shared_path("celeba-id200", "img_align_celeba")
    first = sorted(folder.glob("*.jpg"))[0]
    return np.asarray(Image.open(first).convert("RGB"))


def face_replaced(original: np.ndarray, output: np.ndarray) -> bool:
    difference = np.abs(original[FACE_WINDOW].astype(np.float32) - output[FACE_WINDOW])
    return float(difference.mean()) > 10


# -- nothing overwritten ---------------------------------------------------------------------
def test_summary_and_boxes_out_naming_an_input_are_refused_before_any_work(tmp_path, capsys):
    photos = tmp_path / "photos"
    first, second = save_noise(photos / "a.png"), save_noise(photos / "b.png", seed=1)
    clip = make_clip(tmp_path / "clips" / "clip.mp4")
    before = digests(tmp_path)
    out = tmp_path / "out"
    # `photos/*` expanded by the shell puts the summary path among the inputs
    assert main(["anonymize", str(first), str(second), "-o", str(out), "--summary", str(first),
                 *FAST]) == 2
    assert "--summary" in capsys.readouterr().err
    # a folder input: a file inside it is an input too
    assert main(["anonymize", str(photos), "-o", str(out), "--summary", str(second), *FAST]) == 2
    assert main(["anonymize", str(clip), "-o", str(out), "--boxes-out", str(clip), *FAST]) == 2
    err = capsys.readouterr().err
    assert "--boxes-out" in err and "input file" in err
    # a boxes folder that does not exist, and one boxes file for two videos
    second_clip = make_clip(tmp_path / "clips" / "other.mp4", frames=4)
    before = digests(tmp_path)
    assert main(["anonymize", str(clip), "-o", str(out), "--boxes-out",
                 str(tmp_path / "boxes") + "/", *FAST]) == 2
    assert main(["anonymize", str(clip), str(second_clip), "-o", str(out), "--boxes-out",
                 str(tmp_path / "b.json"), *FAST]) == 2
    assert "folder" in capsys.readouterr().err
    assert digests(tmp_path) == before
    assert not out.exists() and not (tmp_path / "boxes").exists()  # nothing was done
    assert leftovers(tmp_path) == []


def test_sidecar_naming_an_input_fails_that_file_only(tmp_path, capsys):
    out = tmp_path / "out"
    photo = save_noise(tmp_path / "in" / "a.png")
    precious = out / "a.png.json"  # an input that the sidecar of a.png would replace
    precious.parent.mkdir(parents=True)
    precious.write_text('{"mine": true}')
    before = digests(tmp_path)
    other = save_noise(tmp_path / "in" / "b.png", seed=2)
    assert main(["anonymize", str(photo), str(other), str(precious), "-o", str(out), "--json",
                 *FAST]) == 1
    printed = capsys.readouterr().out
    assert "sidecar" in printed and "is an input file" in printed
    assert precious.read_text() == '{"mine": true}'
    assert (out / "b.png").exists() and (out / "b.png.json").exists()  # the batch went on
    assert {k: v for k, v in digests(tmp_path).items() if k in before} == before
    assert leftovers(tmp_path) == []


def test_dotdot_and_absolute_inputs_stay_inside_the_output_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    save_noise(work / "a.png")
    (work / "sub").mkdir()
    monkeypatch.chdir(work / "sub")
    before = digests(tmp_path)
    assert main(["anonymize", str(work / "a.png"), str(work), "-o", str(tmp_path / "abs"),
                 *FAST]) == 0
    assert sorted(p.relative_to(tmp_path / "abs").as_posix()
                  for p in (tmp_path / "abs").rglob("*.png")) == ["a.png", "work/a.png"]
    # `..` is the folder above; its mirror is named after it, inside OUT (OUT inside the input)
    assert main(["anonymize", "..", "-o", "out", *FAST]) == 0
    assert (work / "sub" / "out" / "work" / "a.png").exists()
    # an output sub-folder that is a symlink out of OUT: the target would land outside
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "work").symlink_to(elsewhere)
    assert main(["anonymize", str(work), "-o", str(tmp_path / "linked"), *FAST]) == 1
    assert list(elsewhere.iterdir()) == []
    after = digests(tmp_path)
    new = {path for path in after if path not in before}
    assert all(path.startswith(("work/sub/out/", "abs/")) for path in new), new
    assert {k: after[k] for k in before} == before


def test_output_folder_equal_to_an_input_folder_is_a_clear_error(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_noise(photos / "a.png")
    before = digests(tmp_path)
    assert main(["anonymize", str(photos), "-o", str(photos), *FAST]) == 2
    assert "pick another output folder" in capsys.readouterr().err
    # the parent folder as OUT would mirror the input onto itself
    assert main(["anonymize", str(photos), "-o", str(tmp_path), *FAST]) == 2
    assert "pick another output folder" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["anonymize", str(photos / "a.png"), str(photos), "-o",
                 str(tmp_path / "notes.txt"), *FAST]) == 2
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert digests(photos) == {k.removeprefix("photos/"): v for k, v in before.items()}


# -- every file accounted for, the run goes on -----------------------------------------------
def test_symlink_loops_and_unreadable_entries_are_reported_and_the_run_goes_on(tmp_path, capsys):
    photos = tmp_path / "photos"
    save_noise(photos / "good.png")
    (photos / "loop.jpg").symlink_to(photos / "loop.jpg")
    (photos / "gone.png").symlink_to(photos / "missing.png")
    (photos / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    locked = photos / "locked"
    save_noise(locked / "inside.png")
    locked.chmod(0)
    try:
        code = main(["anonymize", str(photos), "-o", str(tmp_path / "out"), *FAST])
    finally:
        locked.chmod(0o755)
    printed = capsys.readouterr().out
    assert code == 1
    assert (tmp_path / "out" / "photos" / "good.png").exists()
    assert "loop.jpg: symbolic link loop" in printed
    assert "gone.png: broken symbolic link" in printed
    assert "elsewhere: symbolic link to a folder: not followed" in printed
    if os.geteuid() != 0:  # root reads a mode-000 folder anyway
        assert "locked: cannot list this folder" in printed
    assert leftovers(tmp_path / "out") == []


def test_an_unexpected_error_in_one_video_does_not_stop_the_batch(tmp_path, capsys, monkeypatch):
    import cv2

    from facedeid.pipeline import Anonymizer

    bad = make_clip(tmp_path / "in" / "bad.mp4", width=64)
    good = make_clip(tmp_path / "in" / "good.mp4", width=80)
    photo = save_noise(tmp_path / "in" / "photo.png")
    original = Anonymizer.anonymize

    def failing_on_the_bad_clip(self, image, faces=None):
        if image.shape[1] == 64:
            raise cv2.error("a method bug the batch did not expect")
        return original(self, image, faces)

    monkeypatch.setattr(Anonymizer, "anonymize", failing_on_the_bad_clip)
    out = tmp_path / "out"
    before = digests(tmp_path / "in")
    # one boxes file for two videos: refused before any work
    assert main(["anonymize", str(bad), str(good), str(photo), "-o", str(out),
                 "--no-face", "obfuscate", "--boxes-out", str(out), *FAST]) == 2
    out.mkdir()  # now a folder: one boxes file per video
    # `obfuscate` anonymizes every faceless frame, so the bad clip reaches the failing call
    code = main(["anonymize", str(bad), str(good), str(photo), "-o", str(out),
                 "--no-face", "obfuscate", "--boxes-out", str(out), *FAST])
    printed = capsys.readouterr().out
    assert code == 1
    assert "bad.mp4: error: a method bug" in printed
    assert (out / "good.mp4").exists() and (out / "good.mp4.boxes.json").exists()
    assert (out / "photo.png").exists()
    assert not (out / "bad.mp4").exists() and not (out / "bad.mp4.boxes.json").exists()
    assert leftovers(out) == []
    assert digests(tmp_path / "in") == before


# -- nothing left behind -----------------------------------------------------------------------
def _limit_file_size(limit: int):
    def limit_in_child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_in_child


def test_disk_full_leaves_no_partial_or_hidden_file(tmp_path):
    source = tmp_path / "in"
    save_noise(source / "big.png", size=400)  # ~480 kB: cannot be written
    save_noise(source / "small.png", size=16)  # fits: the batch goes on and writes it
    make_clip(source / "clip.mp4", frames=30, width=160, height=120)
    before = digests(source)
    out = tmp_path / "out"
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "facedeid", "anonymize", str(source), "-o", str(out), "--json",
         "--boxes-out", str(boxes), "--summary", str(tmp_path / "summary.json"), *FAST],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        preexec_fn=_limit_file_size(100_000))
    assert result.returncode == 1, result.stderr
    assert "File too large" in result.stdout
    assert (out / "in" / "small.png").exists() and (out / "in" / "small.png.json").exists()
    assert not (out / "in" / "big.png").exists() and not (out / "in" / "clip.mp4").exists()
    assert leftovers(out) == [] and leftovers(boxes) == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {Path(item["source"]).name for item in summary["failures"]} == {"big.png", "clip.mp4"}
    assert digests(source) == before


def test_sigterm_removes_temporary_files_and_exits_143(tmp_path):
    source = make_clip(tmp_path / "in" / "long.mp4", frames=1500, width=128, height=96, crf=40)
    out = tmp_path / "out"
    boxes = tmp_path / "boxes.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "facedeid", "anonymize", str(source), "-o", str(out),
         "--boxes-out", str(boxes), "--no-face", "obfuscate", *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not (
            leftovers(out) and list(tmp_path.glob(".boxes.json.partial-*"))):
        time.sleep(0.02)
    assert leftovers(out), "the video's temporary file never appeared"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "terminated" in err
    assert leftovers(out) == [] and not list(out.rglob("*.mp4"))
    assert leftovers(tmp_path) == [] and not boxes.exists()


def test_sigterm_while_writing_an_image_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The handler raises where the program is: here inside the atomic write, after the
    temporary file exists (a deterministic stand-in for a signal arriving mid-write)."""
    import facedeid.io.images as images

    source = tmp_path / "in"
    for index in range(3):
        save_noise(source / f"{index}.png", seed=index)
    writes = {"n": 0}
    real_fsync = os.fsync

    def fsync_then_sigterm(descriptor):
        real_fsync(descriptor)
        writes["n"] += 1
        if writes["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    def runner_hit(signum, frame):  # main installed no handler: fail instead of dying
        raise AssertionError("SIGTERM reached the test runner")

    monkeypatch.setattr(images.os, "fsync", fsync_then_sigterm)
    out = tmp_path / "out"
    handler_before = signal.signal(signal.SIGTERM, runner_hit)
    try:
        code = main(["anonymize", str(source), "-o", str(out), *FAST])
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, handler_before)
    assert code == 143
    assert handler_after is runner_hit  # main put the caller's handler back
    assert sorted(p.name for p in (out / "in").iterdir()) == ["0.png"]  # the first completed
    assert leftovers(out) == []


# -- file formats ------------------------------------------------------------------------------
def test_heic_jfif_and_unknown_files_are_accounted_for(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(noise(40, 40)).save(photos / "a.jfif", format="JPEG")
    Image.fromarray(noise(40, 40, 1)).save(photos / "b.JPE", format="JPEG")
    (photos / "c.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (photos / "d.CR2").write_bytes(bytes(100))
    (photos / "notes.txt").write_text("not a photo")
    (photos / "e.xmp").write_text("<x/>")
    (photos / ".hidden.jpg").write_bytes(b"")
    summary_path = tmp_path / "summary.json"
    code = main(["anonymize", str(photos), "-o", str(tmp_path / "out"), "--summary",
                 str(summary_path), *FAST])
    printed = capsys.readouterr().out
    assert code == 1  # unsupported files were not anonymized: the user must look
    assert (tmp_path / "out" / "photos" / "a.jfif").exists()
    assert (tmp_path / "out" / "photos" / "b.JPE").exists()
    assert "c.heic: HEIC/HEIF photos cannot be decoded" in printed
    assert "d.CR2: camera RAW files are not decoded" in printed
    assert "ignored: 2 file(s) of unknown type (.txt 1, .xmp 1); 1 hidden" in printed
    summary = json.loads(summary_path.read_text())
    assert {Path(item["source"]).name for item in summary["unsupported"]} == {"c.heic", "d.CR2"}
    assert summary["ignored"] == {"files": 2, "by_suffix": {".txt": 1, ".xmp": 1}}
    named = {Path(item["source"]).name for item in summary["check_by_eye"]}
    assert {"c.heic", "d.CR2", "a.jfif", "b.JPE"} <= named  # faceless noise: no face found


def test_every_page_and_frame_is_anonymized_and_written_back(tmp_path, capsys):
    face = celeba_face()
    rows, cols = np.mgrid[0:face.shape[0], 0:face.shape[1]]
    blank = np.dstack([rows, cols, rows + cols]).astype(np.uint8)  # smooth, and no face
    pages = [face, blank, np.ascontiguousarray(face[:, ::-1])]
    source = tmp_path / "in"
    source.mkdir()
    images = [Image.fromarray(page) for page in pages]
    images[0].save(source / "scan.tif", save_all=True, append_images=images[1:])
    images[0].save(source / "anim.webp", save_all=True, append_images=images[1:],
                   duration=[100, 200, 300], loop=3, lossless=True)
    images[0].save(source / "anim.png", save_all=True, append_images=images[1:],
                   duration=[100, 200, 300], loop=0)
    images[0].save(source / "anim.gif", save_all=True, append_images=images[1:],
                   duration=[100, 200, 300], loop=0)  # a GIF goes through the video path
    before = digests(source)
    out = tmp_path / "out"
    assert main(["anonymize", str(source), "-o", str(out), "--json", "--method", "mosaic",
                 "-q"]) == 0
    printed = capsys.readouterr().out
    for name in ("scan.tif", "anim.webp", "anim.png"):
        written = Image.open(out / "in" / name)
        assert written.n_frames == 3, name
        frames, durations = [], []
        for index in range(3):
            written.seek(index)
            frames.append(np.asarray(written.convert("RGB")))
            durations.append(written.info.get("duration"))
        assert face_replaced(pages[0], frames[0]) and face_replaced(pages[2], frames[2]), name
        assert np.abs(frames[1].astype(int) - pages[1]).mean() < 3, name  # no face: unchanged
        if name != "scan.tif":
            assert durations == [100, 200, 300], name
        assert f"weak: {source / name}" in printed  # a page without a face: check it
        sidecar = json.loads((out / "in" / (name + ".json")).read_text())
        assert sidecar["pages"] == 3 and sorted(f["page"] for f in sidecar["faces"]) == [0, 2]
    assert Image.open(out / "in" / "anim.webp").info["loop"] == 3
    assert Image.open(out / "in" / "anim.gif").n_frames == 3
    assert digests(source) == before
    # a single-page target type for a three-page input: refused, nothing written
    assert main(["anonymize", str(source / "scan.tif"), "-o", str(tmp_path / "one.bmp"),
                 *FAST]) == 1
    assert "pages" in capsys.readouterr().out and not (tmp_path / "one.bmp").exists()
    assert leftovers(tmp_path) == []


def test_16_bit_grey_using_only_the_low_bits_is_anonymized(tmp_path):
    gray = np.asarray(Image.fromarray(celeba_face()).convert("L")).astype(np.uint16)
    ten_bit = gray * 4 + 1  # values 1..1021: a 10-bit sensor stored in a 16-bit PNG
    path = tmp_path / "ten_bit.png"
    Image.fromarray(ten_bit).save(path)
    assert read_image(path).rgb.max() > 200  # the detector sees a picture, not black
    out = tmp_path / "out"
    assert main(["anonymize", str(path), "-o", str(out), "--method", "mosaic", "-q"]) == 0
    result = np.asarray(Image.open(out / "ten_bit.png"))
    assert result.dtype == np.uint16 and result.max() <= 1023
    assert (result[:12] == ten_bit[:12]).all()  # outside the face: the original samples
    assert np.abs(result[FACE_WINDOW].astype(int) - ten_bit[FACE_WINDOW]).mean() > 40


def test_summary_names_every_file_to_check_by_eye(tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(celeba_face()).save(source / "face.png")
    save_noise(source / "wall.png")
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (source / "phone.heif").write_bytes(bytes(32))
    summary_path = tmp_path / "summary.json"
    assert main(["anonymize", str(source), "-o", str(tmp_path / "out"), "--summary",
                 str(summary_path), *FAST]) == 1
    printed = capsys.readouterr().out
    assert f"no face: {source / 'wall.png'}" in printed
    assert f"failed: {source / 'broken.jpg'}" in printed
    assert f"unsupported: {source / 'phone.heif'}" in printed
    assert "face.png" not in printed  # anonymized without a warning: nothing to check
    summary = json.loads(summary_path.read_text())
    whys = {Path(item["source"]).name: item["why"] for item in summary["check_by_eye"]}
    assert set(whys) == {"wall.png", "broken.jpg", "phone.heif"}
    assert whys["wall.png"].startswith("no face") and whys["broken.jpg"].startswith("failed")
