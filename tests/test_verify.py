"""Leak audit (`facedeid verify`): untouched and re-encoded faces leak, real anonymization does
not, a replaced face passes, a weak method leaks identity, leaked video frames are named, and
the fix removes a leak.

Scenes paste real CelebA thumbnails (celeba-id200 test identities) into a synthetic canvas;
the tests skip when the shared data is absent.
"""
from __future__ import annotations

import io
import json
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from facedeid.cli import main
from facedeid.verify import (LeakAuditor, fix_file, fix_image, pair_paths, pixel_change,
                             UNCHANGED_MEAN_DIFFERENCE)

from . import leak_cases

needs_celeba = pytest.mark.skipif(not leak_cases.have_celeba(),
                                  reason="needs ../shared/data/celeba-id200")
FACE_AT = (150, 60)  # where a thumbnail's top-left corner goes on the canvas


def _scene(thumbnail: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 320x448 canvas with ``thumbnail`` (178x218, face ~90 px) pasted at :data:`FACE_AT`."""
    canvas = leak_cases.background(320, 448, seed=seed)
    x, y = FACE_AT
    canvas[y:y + thumbnail.shape[0], x:x + thumbnail.shape[1]] = thumbnail
    return canvas


@pytest.fixture(scope="module")
def people():
    if not leak_cases.have_celeba():
        pytest.skip("needs ../shared/data/celeba-id200")
    return [leak_cases.read_rgb(path) for path in leak_cases.celeba_files(2)]


@pytest.fixture(scope="module")
def original(people):
    return _scene(people[0])


@pytest.fixture(scope="module")
def auditor():
    return LeakAuditor()  # dlib-hog: the default when the anonymizer used centerface


@pytest.fixture(scope="module")
def mosaic():
    from facedeid.pipeline import Anonymizer
    return Anonymizer("mosaic", seed=0)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _verdicts(findings) -> list[str]:
    return [finding.verdict for finding in findings]


def test_pixel_change_separates_reencoding_from_obfuscation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    box = np.array([8, 8, 56, 56], np.float32)
    assert pixel_change(image, image, box)[:2] == (0.0, 1.0)
    flat = image.copy()
    flat[8:56, 8:56] = image[8:56, 8:56].reshape(-1, 3).mean(axis=0).astype(np.uint8)
    change, unchanged, ssim = pixel_change(image, flat, box)
    assert change > UNCHANGED_MEAN_DIFFERENCE and unchanged < 0.5 and ssim < 0.5


def test_pair_paths_accepts_anonymize_layout_and_plain_mirror(tmp_path):
    source = tmp_path / "album"
    (source / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.png"):
        (source / name).write_bytes(b"x")
    nested, mirror = tmp_path / "anon", tmp_path / "mirror"
    (nested / "album" / "sub").mkdir(parents=True)
    (mirror / "sub").mkdir(parents=True)
    (nested / "album" / "a.jpg").write_bytes(b"y")
    (mirror / "sub" / "b.png").write_bytes(b"y")
    assert dict(pair_paths(source, nested))[source / "a.jpg"] == nested / "album" / "a.jpg"
    assert dict(pair_paths(source, mirror))[source / "sub" / "b.png"] == mirror / "sub" / "b.png"
    single = tmp_path / "one.png"
    single.write_bytes(b"x")
    assert pair_paths(single, nested) == [(single, nested / "one.png")]
    # usage errors exit 2 before any model loads
    assert main(["verify", str(tmp_path / "missing"), str(nested), "-q"]) == 2
    assert main(["verify", str(source), str(nested), "--every", "0"]) == 2


@needs_celeba
def test_untouched_and_reencoded_outputs_leak_unchanged(original, auditor, tmp_path):
    assert _verdicts(auditor.audit_images(original, original.copy())) == ["leaked-unchanged"]
    assert _verdicts(auditor.audit_images(original, _jpeg(original, 75))) == ["leaked-unchanged"]
    Image.fromarray(original).save(tmp_path / "photo.png")
    Image.fromarray(original).save(tmp_path / "photo_out.jpg", quality=80)
    report_file = tmp_path / "audit.json"
    code = main(["verify", str(tmp_path / "photo.png"), str(tmp_path / "photo_out.jpg"), "-q",
                 "--json", str(report_file)])
    assert code == 1
    report = json.loads(report_file.read_text())
    assert report["leaked"] and report["faces"]["leaked-unchanged"] == 1


@needs_celeba
def test_mosaic_output_passes(original, auditor, mosaic, tmp_path):
    anonymized = mosaic.anonymize(original).image
    findings = auditor.audit_images(original, anonymized)
    assert _verdicts(findings) == ["ok"], [f.reason for f in findings]
    assert findings[0].distance > auditor.recognizer.threshold
    Image.fromarray(original).save(tmp_path / "photo.png")
    out = tmp_path / "anon"
    out.mkdir()
    Image.fromarray(anonymized).save(out / "photo.png")
    assert main(["verify", str(tmp_path / "photo.png"), str(out), "-q"]) == 0


@needs_celeba
def test_someone_elses_face_passes(original, people, auditor):
    replaced = _scene(people[1])  # same canvas, another identity's thumbnail at the same place
    findings = auditor.audit_images(original, replaced)
    assert _verdicts(findings) == ["ok"], [f.reason for f in findings]


@needs_celeba
def test_blindfold_leaks_identity_and_fix_removes_it(original, auditor):
    from facedeid.pipeline import Anonymizer

    # Measured first: dlib re-identified 47/48 blindfolded CelebA faces (facedeid.verify).
    blindfold = Anonymizer("blindfold", seed=0)
    anonymized = blindfold.anonymize(original).image
    findings = auditor.audit_images(original, anonymized)
    assert _verdicts(findings) == ["leaked-identity"], [f.reason for f in findings]
    # Blindfolding again cannot help; the fallback pixelation must take over.
    fixed = fix_image(original, anonymized, findings, blindfold, auditor=auditor)
    assert _verdicts(auditor.judge(original, fixed, [f.to_face() for f in findings])) == ["ok"]
    assert not any(f.leaked for f in auditor.audit_images(original, fixed))


@needs_celeba
def test_fix_file_rewrites_an_untouched_output_in_place(original, auditor, mosaic, tmp_path):
    source, output = tmp_path / "photo.png", tmp_path / "photo_out.png"
    Image.fromarray(original).save(source)
    Image.fromarray(original).save(output)
    before = source.read_bytes()
    report = auditor.audit_pair(source, output)
    assert report.leaked
    again = fix_file(source, output, report, mosaic, auditor=auditor)
    assert again.fixed == 1 and not again.leaked and again.status == "audited"
    assert source.read_bytes() == before  # the original is never written
    assert again.to_dict()["counts"]["ok"] == 1


def _write_video(path, frames, rate=10):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"crf": "18", "preset": "ultrafast"}
        stream.codec_context.time_base = Fraction(1, rate)
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@needs_celeba
def test_video_reports_the_untouched_frames(original, auditor, mosaic, tmp_path):
    frames = []
    for index in range(12):  # the face drifts right 2 px a frame
        frames.append(np.ascontiguousarray(np.roll(original, 2 * index, axis=1)))
    untouched = {3, 8}
    anonymized = [frame if index in untouched else mosaic.anonymize(frame).image
                  for index, frame in enumerate(frames)]
    _write_video(tmp_path / "clip.mp4", frames)
    _write_video(tmp_path / "clip_anon.mp4", anonymized)
    report = auditor.audit_pair(tmp_path / "clip.mp4", tmp_path / "clip_anon.mp4")
    assert report.kind == "video" and report.frames == 12 and report.frames_checked == 12
    assert {finding.frame for finding in report.leaks} == untouched
    assert all(f.verdict == "leaked-unchanged" for f in report.leaks)
    assert report.leaks[0].time == pytest.approx(0.3)
    assert report.to_dict()["leaked_frames"] == [3, 8]
    every_other = auditor.audit_pair(tmp_path / "clip.mp4", tmp_path / "clip_anon.mp4", every=2)
    assert every_other.frames_checked == 6 and {f.frame for f in every_other.leaks} == {8}


@needs_celeba
def test_solid_mask_passes_even_where_dlib_matches_darkness(original, auditor):
    from facedeid.pipeline import Anonymizer

    findings = auditor.audit_images(original, Anonymizer("mask").anonymize(original).image)
    assert _verdicts(findings) == ["ok"], [f.reason for f in findings]


@needs_celeba
def test_small_faces_are_judged_by_structure(people, mosaic):
    canvas = leak_cases.background(240, 320, seed=1)
    leak_cases.paste_face(canvas, people[0], 120, 80, face_width=30)
    small_auditor = LeakAuditor("centerface")  # dlib's HOG does not see 30-px faces
    faces = small_auditor.find_faces(canvas)
    assert len(faces) == 1 and min(faces[0].width, faces[0].height) < 40
    untouched = small_auditor.judge(canvas, _jpeg(canvas, 50), faces)
    assert untouched[0].leaked and untouched[0].distance is None and untouched[0].ssim > 0.85
    mosaicked = small_auditor.judge(canvas, mosaic.anonymize(canvas, faces=faces).image, faces)
    assert _verdicts(mosaicked) == ["ok"], [f.reason for f in mosaicked]


class _FixedDetector:
    """Returns the boxes it was given (isolates the auditor's filtering from any detector)."""

    name = "fixed"

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image):
        from facedeid.detection import Face
        return [Face(box, score=0.05) for box in self.boxes]


def test_a_detection_on_a_smooth_background_is_no_face_to_audit(people, original, auditor,
                                                                 monkeypatch):
    blob = np.array([10, 10, 70, 70], np.float32)  # the canvas corner: smooth colour noise
    x, y = FACE_AT
    face = np.array([x + 45, y + 65, x + 135, y + 185], np.float32)
    monkeypatch.setattr(auditor, "detector", _FixedDetector([blob, face]))
    found = auditor.find_faces(original, second_chance=False)
    assert [f.box.tolist() for f in found] == [face.tolist()]
