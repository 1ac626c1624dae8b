"""Video pipeline: audio/timing/rotation kept, tracker fill, bad input, atomic output.

Clips are generated here with PyAV from a real face (scikit-image's astronaut) so the tests
need no shared data; the real CenterFace detector runs on them.
"""
from __future__ import annotations

import functools
import http.server
import json
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from facedeid.detection import Face
from facedeid.errors import InvalidInputError
from facedeid.pipeline import Anonymizer
from facedeid.video import FaceTracker, VideoOptions, anonymize_video
from facedeid.video.io import rotate_to_storage

FACE_SIZE = 96  # side of the pasted astronaut head-and-shoulders patch
TIME_BASE = Fraction(1, 1000)


@functools.lru_cache(maxsize=1)
def _face_patch() -> np.ndarray:
    """``(96, 96, 3)`` uint8: the astronaut's head, a real face CenterFace finds."""
    import cv2
    from skimage import data

    image = data.astronaut()
    return cv2.resize(image[20:260, 110:350], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)


def patch_box_at(index: int, width: int, height: int) -> np.ndarray:
    """Where the patch sits on frame ``index`` (display coordinates): moves right 4 px/frame."""
    x0 = 8 + 4 * index
    y0 = (height - FACE_SIZE) // 2
    return np.array([x0, y0, x0 + FACE_SIZE, y0 + FACE_SIZE], np.float32)


@functools.lru_cache(maxsize=1)
def _face_in_patch() -> np.ndarray:
    """The face's box inside the patch, found once by CenterFace on a still frame."""
    from facedeid.detection import create_detector

    canvas = np.full((160, 256, 3), 128, np.uint8)
    canvas[32:32 + FACE_SIZE, 8:8 + FACE_SIZE] = _face_patch()
    faces = create_detector("centerface").detect(canvas)
    assert len(faces) == 1
    return faces[0].box - np.array([8, 32, 8, 32], np.float32)


def face_box_at(index: int, width: int, height: int) -> np.ndarray:
    """The true face box on frame ``index`` (ground truth for 'no face pixel left')."""
    return _face_in_patch() + np.tile(patch_box_at(index, width, height)[:2], 2)


def upright_frame(index: int, width: int, height: int) -> np.ndarray:
    """Textured background plus the moving face patch: ``(height, width, 3)`` uint8."""
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    frame = (frame // 2 + 60).astype(np.uint8)
    x0, y0, x1, y1 = patch_box_at(index, width, height).astype(int)
    frame[y0:y1, x0:x1] = _face_patch()[: y1 - y0, : x1 - x0]
    return frame


def make_clip(path: Path, frames: int = 30, width: int = 256, height: int = 160, *,
              rotation: int = 0, audio: bool = True, vfr: bool = False,
              codec: str = "libx264", rate: int = 25) -> list[int]:
    """Write a test clip; returns the video pts (ms) of each frame.

    With ``rotation`` the *stored* frames are rotated so that a player shows them upright.
    """
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=rate)
    stored_w, stored_h = (height, width) if rotation % 180 else (width, height)
    stream.width, stream.height = stored_w, stored_h
    stream.pix_fmt = "yuv420p"
    stream.time_base = TIME_BASE
    stream.codec_context.time_base = TIME_BASE
    if codec == "libx264":
        stream.codec_context.options = {"preset": "ultrafast", "crf": "18"}
    if rotation:
        stream.set_display_rotation(rotation)
    audio_stream = container.add_stream("aac", rate=16000, layout="mono") if audio else None
    pts_list = []
    pts = 0
    for index in range(frames):
        image = rotate_to_storage(upright_frame(index, width, height), rotation)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, TIME_BASE
        pts_list.append(pts)
        container.mux(stream.encode(frame))
        pts += (40 if not vfr else (20 if index % 3 else 70))
    container.mux(stream.encode(None))
    if audio_stream is not None:
        samples = int(16000 * pts / 1000)
        tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[start:start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            frame.time_base = Fraction(1, 16000)
            container.mux(audio_stream.encode(frame))
        container.mux(audio_stream.encode(None))
    container.close()
    return pts_list


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def decoded(path: Path) -> tuple[list[np.ndarray], list[int], int, av.video.stream.VideoStream]:
    """Upright RGB frames, pts in ms, display rotation."""
    images, pts, rotation = [], [], 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            rotation = int(frame.rotation) % 360
            turns = (rotation // 90) % 4
            images.append(np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), turns)))
            pts.append(int(round(frame.pts * frame.time_base * 1000)))
        rate = stream.average_rate
    return images, pts, rotation, rate


def inner(box: np.ndarray, shrink: float = 0.1) -> tuple[slice, slice]:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * shrink, (y1 - y0) * shrink
    return slice(int(y0 + dy), int(y1 - dy)), slice(int(x0 + dx), int(x1 - dx))


def assert_faces_hidden(out_frames, width, height, frames=None):
    """With the solid ``mask`` method the inner face is flat: nothing of it survives."""
    for index, image in enumerate(out_frames):
        if frames is not None and index not in frames:
            continue
        rows, cols = inner(face_box_at(index, width, height))
        original = upright_frame(index, width, height)[rows, cols].astype(np.float32)
        region = image[rows, cols].astype(np.float32)
        assert region.std() < 0.2 * original.std(), f"face visible on frame {index}"


@pytest.fixture(scope="module")
def mask_anonymizer():
    return Anonymizer("mask", landmarks="box")


QUIET = dict(progress=False)


def test_audio_timing_rotation_kept(tmp_path, mask_anonymizer):
    source = tmp_path / "rot_vfr.mp4"
    pts = make_clip(source, frames=30, rotation=90, vfr=True)
    target = tmp_path / "out.mp4"
    report = anonymize_video(source, target, mask_anonymizer, VideoOptions(every=4, **QUIET))
    assert report.frames == 30 and report.tracks >= 1
    assert audio_packets(target) == audio_packets(source)  # copied byte for byte, in order
    in_frames, in_pts, in_rot, _ = decoded(source)
    out_frames, out_pts, out_rot, _ = decoded(target)
    assert out_rot == in_rot == 90
    assert len(out_frames) == len(in_frames) == 30
    assert np.abs(np.array(out_pts) - np.array(pts)).max() <= 1  # VFR timestamps kept
    assert out_frames[0].shape == (160, 256, 3)  # upright size (stored 256 high, 160 wide)
    assert_faces_hidden(out_frames, 256, 160)
    # Away from the face, the picture is kept (only face regions are touched).
    assert np.abs(out_frames[5][:, -40:].astype(int) - in_frames[5][:, -40:]).mean() < 4


def test_constant_rate_and_duration_kept(tmp_path, mask_anonymizer):
    source = tmp_path / "cfr.mkv"
    make_clip(source, frames=25, rate=25)
    target = tmp_path / "out.mkv"
    anonymize_video(source, target, mask_anonymizer, VideoOptions(every=3, **QUIET))
    with av.open(str(source)) as a, av.open(str(target)) as b:
        assert b.streams.video[0].average_rate == a.streams.video[0].average_rate
        assert abs(b.duration - a.duration) / av.time_base <= 1 / 25 + 1e-3
    assert audio_packets(target) == audio_packets(source)


def test_on_frame_reports_every_frame_with_the_total(tmp_path, mask_anonymizer):
    """The service's job progress comes from this callback, with the progress bar off."""
    source = tmp_path / "cfr.mkv"
    make_clip(source, frames=12, rate=25)
    seen = []
    report = anonymize_video(source, tmp_path / "out.mkv", mask_anonymizer,
                             VideoOptions(on_frame=lambda done, total: seen.append((done, total)),
                                          **QUIET))
    assert [done for done, _ in seen] == list(range(1, report.frames + 1))
    totals = {total for _, total in seen}  # the container's estimate, one value throughout
    assert len(totals) == 1 and totals.pop() >= report.frames


def test_tracker_fills_detector_gaps(tmp_path, mask_anonymizer):
    """Boxes given only on frames 0, 3 and 17: frames 4-16 rely on coasting, then interpolation."""
    source = tmp_path / "clip.mp4"
    make_clip(source, frames=24, audio=False)
    boxes = {"frames": [{"frame": i, "faces": [{"box": face_box_at(i, 256, 160).tolist()}]}
                        for i in (0, 3, 17, 23)]}
    boxes_in = tmp_path / "boxes.json"
    boxes_in.write_text(json.dumps(boxes))
    boxes_out = tmp_path / "out.json"
    target = tmp_path / "out.mp4"
    options = VideoOptions(boxes_in=boxes_in, boxes_out=boxes_out, max_gap=20, **QUIET)
    anonymize_video(source, target, mask_anonymizer, options)
    out_frames, *_ = decoded(target)
    assert_faces_hidden(out_frames, 256, 160)
    exported = json.loads(boxes_out.read_text())
    assert [e["frame"] for e in exported["frames"]] == list(range(24))
    states = {f["state"] for e in exported["frames"] for f in e["faces"]}
    assert {"detected", "interpolated"} <= states
    assert {f["track_id"] for e in exported["frames"] for f in e["faces"]} == {0}


def test_detector_skipped_frames_are_covered(tmp_path, mask_anonymizer):
    source = tmp_path / "clip.mp4"
    make_clip(source, frames=20, audio=False)
    boxes_out = tmp_path / "boxes.json"
    target = tmp_path / "out.mp4"
    report = anonymize_video(source, target, mask_anonymizer,
                             VideoOptions(every=6, boxes_out=boxes_out, **QUIET))
    assert report.detection_frames == 5  # frames 0, 6, 12, 18 and the last one
    out_frames, *_ = decoded(target)
    assert_faces_hidden(out_frames, 256, 160)
    ids = {f["track_id"] for e in json.loads(boxes_out.read_text())["frames"] for f in e["faces"]}
    assert ids == {0}  # one face, one identity over the clip


def test_tracker_coasts_and_grows_then_drops():
    tracker = FaceTracker(200, 200, max_gap=3, grow_per_frame=0.1)
    box = np.array([50, 50, 90, 90], np.float32)
    tracker.step(0, [Face(box, score=0.9)])
    tracker.step(1, [Face(box + 2, score=0.9)])
    sizes = []
    for frame in range(2, 7):
        faces = tracker.step(frame, [])[frame]
        sizes.append(faces[0].width if faces else 0.0)
    assert sizes[0] < sizes[1] < sizes[2]  # grows while unseen
    assert sizes[3:] == [0.0, 0.0]  # gone after max_gap frames
    # A smoothed box is never smaller than the detection it comes from.
    tracker = FaceTracker(200, 200)
    tracker.step(0, [Face([40, 40, 120, 120], score=0.9)])
    small = Face([60, 60, 100, 100], score=0.9)
    face = tracker.step(1, [small])[1][0]
    assert face.box[0] <= 60 and face.box[2] >= 100


def test_tracker_backfills_new_face_and_keeps_weak_matches():
    tracker = FaceTracker(300, 300, birth_score=0.5, keep_score=0.1)
    assert tracker.step(0, [Face([10, 10, 40, 40], score=0.3)])[0] == []  # too weak to start
    out = tracker.step(4, [Face([100, 100, 140, 140], score=0.9)])
    assert all(len(out[i]) == 1 and out[i][0].extra["state"] == "backfilled" for i in (1, 2, 3))
    out = tracker.step(5, [Face([102, 100, 142, 140], score=0.2)])  # weak, but matches the track
    assert out[5][0].extra["state"] == "detected" and out[5][0].track_id == 0


def test_tracker_backfills_a_full_resolution_face_over_the_whole_window():
    """A face first found at step 4 is drawn back to ``backfill_since``, past the step at 2."""
    tracker = FaceTracker(300, 300)
    tracker.step(1, [])
    assert tracker.step(2, []) == {2: []}  # the cheap search saw nothing
    out = tracker.step(4, [Face([100, 100, 130, 130], score=0.9)], backfill_since=1)
    assert sorted(out) == [1, 2, 3, 4]
    assert all(len(out[i]) == 1 and out[i][0].extra["state"] == "backfilled" for i in (1, 2, 3))
    without = FaceTracker(300, 300)
    without.step(2, [])
    assert sorted(without.step(4, [Face([100, 100, 130, 130], score=0.9)])) == [3, 4]


def test_interrupted_run_leaves_no_file(tmp_path, mask_anonymizer):
    source = tmp_path / "clip.mp4"
    make_clip(source, frames=20)
    target = tmp_path / "out" / "result.mp4"
    calls = {"n": 0}

    class Interrupting(Anonymizer):
        def anonymize(self, image, faces=None):
            calls["n"] += 1
            if calls["n"] == 8:
                raise KeyboardInterrupt  # the user pressing Ctrl-C midway
            return super().anonymize(image, faces)

    anonymizer = Interrupting("mask", landmarks="box")
    with pytest.raises(KeyboardInterrupt):
        anonymize_video(source, target, anonymizer,
                        VideoOptions(every=2, boxes_out=tmp_path / "out" / "b.json", **QUIET))
    assert calls["n"] == 8
    assert list(target.parent.iterdir()) == []  # neither the video nor a temp file remains


def test_corrupt_truncated_and_empty_inputs(tmp_path, mask_anonymizer):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    with pytest.raises(InvalidInputError, match="truncated|corrupt"):
        anonymize_video(garbage, tmp_path / "a.mp4", mask_anonymizer, VideoOptions(**QUIET))
    # MP4 keeps its index at the end: cut in half, nothing is readable.
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=20)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(InvalidInputError):
        anonymize_video(cut, tmp_path / "b.mp4", mask_anonymizer, VideoOptions(**QUIET))
    # Matroska streams: a truncated file yields the frames before the cut, with a warning.
    mkv = tmp_path / "clip.mkv"
    make_clip(mkv, frames=36, audio=False)
    cut_mkv = tmp_path / "cut.mkv"
    cut_mkv.write_bytes(mkv.read_bytes()[: int(mkv.stat().st_size * 0.6)])
    report = anonymize_video(cut_mkv, tmp_path / "c.mkv", mask_anonymizer, VideoOptions(**QUIET))
    assert 5 < report.frames < 36
    # A container with a video stream but no frames.
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = 64, 64
        container.start_encoding()  # header written, no frame ever
    assert empty.stat().st_size > 0
    with pytest.raises(InvalidInputError, match="no video frame|no frame size|cannot read"):
        anonymize_video(empty, tmp_path / "d.mp4", mask_anonymizer, VideoOptions(**QUIET))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "d.mp4").exists()


@pytest.mark.parametrize("size", [(1, 1), (33, 17)])
def test_odd_sizes(tmp_path, mask_anonymizer, size):
    width, height = size
    source = tmp_path / "odd.mkv"
    container = av.open(str(source), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
    for index in range(5):
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * index, np.uint8),
                                           format="rgb24")
        frame.pts = index
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    target = tmp_path / "out.mp4"
    report = anonymize_video(source, target, mask_anonymizer, VideoOptions(**QUIET))
    frames, *_ = decoded(target)
    assert report.frames == len(frames) == 5
    assert frames[0].shape == (height, width, 3)


def test_gif_in_gif_out(tmp_path, mask_anonymizer):
    from PIL import Image

    source = tmp_path / "anim.gif"
    frames = [Image.fromarray(upright_frame(i, 256, 160)) for i in range(12)]
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=100, loop=0)
    target = tmp_path / "out.gif"
    report = anonymize_video(source, target, mask_anonymizer, VideoOptions(every=2, **QUIET))
    frames, pts, *_ = decoded(target)
    assert report.frames == len(frames) == 12 and report.tracks >= 1
    assert_faces_hidden(frames, 256, 160)


def test_seeded_method_keeps_identity_per_track(tmp_path):
    """A static face with gaussian noise: the same track draws the same noise every frame."""
    source = tmp_path / "static.mp4"
    container = av.open(str(source), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 256, 160, "yuv444p"
    stream.codec_context.options = {"crf": "0", "preset": "ultrafast"}
    for index in range(6):
        frame = av.VideoFrame.from_ndarray(upright_frame(0, 256, 160), format="rgb24")
        frame.pts = index
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    target = tmp_path / "out.mkv"
    anonymizer = Anonymizer("gaussian_noise", landmarks="box")  # no seed: one per video
    anonymize_video(source, target, anonymizer,
                    VideoOptions(every=1, codec="libx264rgb", crf=0, **QUIET))
    frames, *_ = decoded(target)
    rows, cols = inner(face_box_at(0, 256, 160))
    first = frames[0][rows, cols].astype(int)
    assert np.abs(first - upright_frame(0, 256, 160)[rows, cols]).mean() > 5
    for image in frames[1:]:  # same noise pattern on every frame (lossless output)
        assert np.abs(image[rows, cols].astype(int) - first).mean() < 1.0


def test_stream_url_and_cli(tmp_path):
    """An http:// URL takes the live-source path; the CLI writes the file and the boxes."""
    from facedeid.cli import main

    make_clip(tmp_path / "served.mp4", frames=10)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/served.mp4"
        target = tmp_path / "out" / "live.mp4"
        code = main(["anonymize", url, "-o", str(target), "--method", "mask", "--landmarks", "box",
                     "--every", "2", "--boxes-out", str(tmp_path / "live.json"), "-q"])
    finally:
        server.shutdown()
    assert code == 0
    frames, *_ = decoded(target)
    assert len(frames) == 10
    assert audio_packets(target) == audio_packets(tmp_path / "served.mp4")
    assert len(json.loads((tmp_path / "live.json").read_text())["frames"]) == 10


# -- the search schedule's guarantees (issue 12) --------------------------------------------

def write_clip(path: Path, images) -> None:
    """Encode upright RGB ``images`` near-losslessly at 25 fps (no audio)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "12"}
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def background(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    texture = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], -1)
    return (texture // 2 + 60).astype(np.uint8)


def paste_face(image: np.ndarray, x0: int, y0: int, side: int = FACE_SIZE) -> np.ndarray:
    """The astronaut patch scaled to ``side`` pasted at (x0, y0); returns the face's box."""
    import cv2

    patch = _face_patch() if side == FACE_SIZE else \
        cv2.resize(_face_patch(), (side, side), interpolation=cv2.INTER_AREA)
    image[y0:y0 + side, x0:x0 + side] = patch
    return _face_in_patch() * (side / FACE_SIZE) + np.array([x0, y0, x0, y0], np.float32)


def face_changed(source_frame: np.ndarray, output_frame: np.ndarray, box: np.ndarray) -> float:
    """Mean absolute change over the inner face box (a kept face changes by ~1-2 levels)."""
    rows, cols = inner(box, 0.15)
    return float(np.abs(output_frame[rows, cols].astype(int) - source_frame[rows, cols]).mean())


@pytest.fixture(scope="module")
def mosaic_anonymizer():
    return Anonymizer("mosaic", landmarks="box")


@pytest.mark.parametrize("first", [2, 3])
def test_face_on_screen_for_two_frames_is_anonymized(tmp_path, mosaic_anonymizer, first):
    """A face shown for exactly two frames between the old schedule's detection frames
    (every 6th) is anonymized on both, whichever parity it starts on; frames without it stay."""
    width, height = 640, 360
    images, boxes = [], {}
    for index in range(10):
        image = background(width, height)
        if index in (first, first + 1):
            boxes[index] = paste_face(image, 300, 120)
        images.append(image)
    source, target = tmp_path / "flash.mp4", tmp_path / "out.mp4"
    write_clip(source, images)
    report = anonymize_video(source, target, mosaic_anonymizer, VideoOptions(**QUIET))
    out, *_ = decoded(target)
    original, *_ = decoded(source)
    assert report.tracks >= 1
    for index, box in boxes.items():
        assert face_changed(original[index], out[index], box) > 12, f"face kept on frame {index}"
    # Nothing there, nothing anonymized: only re-encoding loss (~3 levels on this texture).
    assert face_changed(original[0], out[0], boxes[first]) < 6


def test_face_swinging_with_the_old_schedule_is_covered_on_every_frame(tmp_path,
                                                                      mosaic_anonymizer):
    """A face swinging +-90 px with a 6-frame period (centred on every 6th frame, where the
    old schedule looked) is anonymized on every frame."""
    width, height = 640, 360
    images, boxes = [], []
    for index in range(18):
        image = background(width, height)
        x0 = int(round(272 + 90 * np.sin(2 * np.pi * index / 6)))
        boxes.append(paste_face(image, x0, 130))
        images.append(image)
    source, target = tmp_path / "swing.mp4", tmp_path / "out.mp4"
    write_clip(source, images)
    anonymize_video(source, target, mosaic_anonymizer, VideoOptions(**QUIET))
    out, *_ = decoded(target)
    original, *_ = decoded(source)
    changes = [face_changed(original[i], out[i], box) for i, box in enumerate(boxes)]
    assert min(changes) > 12, f"face (partly) kept: per-frame change {np.round(changes, 1)}"


def test_small_faces_in_4k_are_anonymized(tmp_path, mosaic_anonymizer):
    """3840x2160, 3 frames, faces 32-80 px wide (invisible at the every-k scale): the
    full-resolution search finds them and the tracker covers the frames between."""
    width, height = 3840, 2160
    sides = {32: (400, 300), 48: (1700, 1500), 64: (3000, 700), 80: (1000, 1800)}
    face_in_patch = _face_in_patch()
    face_share = float(face_in_patch[2] - face_in_patch[0]) / FACE_SIZE
    images, boxes = [], []
    for index in range(3):
        image = background(width, height)
        boxes.append([paste_face(image, x + 3 * index, y, round(side / face_share))
                      for side, (x, y) in sides.items()])
        images.append(image)
    face_widths = [box[2] - box[0] for box in boxes[0]]
    assert 30 <= min(face_widths) and max(face_widths) <= 82
    source, target = tmp_path / "uhd.mp4", tmp_path / "out.mp4"
    write_clip(source, images)
    report = anonymize_video(source, target, mosaic_anonymizer, VideoOptions(**QUIET))
    out, *_ = decoded(target)
    original, *_ = decoded(source)
    assert report.full_resolution_frames == 2  # the first and the last frame
    for index, frame_boxes in enumerate(boxes):
        for box in frame_boxes:
            change = face_changed(original[index], out[index], box)
            assert change > 10, f"{box[2] - box[0]:.0f} px face kept on frame {index}"


def _x264_clip(path, frames: int, configure) -> None:
    """A 256x160 H.264 clip of ``upright_frame``s; ``configure(stream)`` sets what a test checks."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256, 160, "yuv420p"
        configure(stream)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(upright_frame(index, 256, 160), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_colour_description_and_language_kept(tmp_path, mask_anonymizer):
    """BT.709 tags, the full-range flag and the streams' language tags reach the output."""
    source = tmp_path / "tagged.mkv"
    def tag(stream) -> None:
        context = stream.codec_context
        context.color_primaries, context.color_trc, context.colorspace = 1, 1, 1  # BT.709
        context.color_range = 2  # full ("JPEG") range
        stream.metadata["language"] = "fra"

    _x264_clip(source, 3, tag)
    target = tmp_path / "out.mkv"
    anonymize_video(source, target, mask_anonymizer, VideoOptions(**QUIET))
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        assert (context.color_primaries, context.color_trc, context.colorspace) == (1, 1, 1)
        assert context.color_range == 2
        assert stream.metadata.get("language") == "fra"


# -- the threaded engine (issue 18) ------------------------------------------------------------

def _engine_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("facedeid-")]


def test_an_encoder_error_in_the_renderer_thread_reaches_the_caller(tmp_path, mask_anonymizer,
                                                                   monkeypatch):
    """Encoding runs in a thread of its own: its error is raised as itself, no file is left."""
    from facedeid.video.io import VideoSink

    source = tmp_path / "clip.mp4"
    make_clip(source, frames=30)
    write, written = VideoSink.write, []

    def failing_write(sink, frame):
        if len(written) == 5:
            raise OSError(28, "No space left on device")
        written.append(frame.pts)
        write(sink, frame)

    monkeypatch.setattr(VideoSink, "write", failing_write)
    target = tmp_path / "out" / "result.mp4"
    with pytest.raises(OSError, match="No space left"):
        anonymize_video(source, target, mask_anonymizer,
                        VideoOptions(boxes_out=tmp_path / "out" / "b.json", **QUIET))
    assert len(written) == 5  # nothing encoded after the failure
    assert list(target.parent.iterdir()) == []
    assert _engine_threads() == []  # decoder and renderer threads have ended


def test_max_frames_stops_the_decoder_and_keeps_frame_order(tmp_path, mask_anonymizer):
    source = tmp_path / "clip.mp4"
    pts_in = make_clip(source, frames=30)
    target = tmp_path / "first.mp4"
    report = anonymize_video(source, target, mask_anonymizer,
                             VideoOptions(max_frames=13, **QUIET))
    assert report.frames == 13 and _engine_threads() == []
    images, pts, _, _ = decoded(target)
    assert pts == [int(round(p)) for p in pts_in[:13]]  # in order, none lost or repeated
    assert_faces_hidden(images, 256, 160)


def test_the_encoder_chooses_frame_types(tmp_path, mask_anonymizer):
    """An all-intra input must not force an all-intra output (decoded frames carry their
    picture type, which x264 would obey): the output is several times smaller."""
    source = tmp_path / "intra.mp4"
    def every_frame_a_keyframe(stream) -> None:
        stream.codec_context.gop_size = 1
        stream.codec_context.options = {"preset": "ultrafast", "crf": "18"}

    _x264_clip(source, 30, every_frame_a_keyframe)
    target = tmp_path / "out.mp4"
    anonymize_video(source, target, mask_anonymizer, VideoOptions(**QUIET))
    with av.open(str(target)) as container:
        keyframes = sum(packet.is_keyframe for packet in container.demux(video=0) if packet.size)
    assert keyframes < 5


def test_the_video_detector_runs_one_thread_loaded_once(mask_anonymizer):
    from facedeid.video.pipeline import DETECTOR_THREADS, _FrameSearch

    first = _FrameSearch(mask_anonymizer, VideoOptions())
    second = _FrameSearch(mask_anonymizer, VideoOptions())
    assert first.detector is second.detector is not mask_anonymizer.detector
    options = first.detector._session.get_session_options()
    assert options.intra_op_num_threads == DETECTOR_THREADS == 1
    assert first.detector.score_threshold == mask_anonymizer.detector.score_threshold
