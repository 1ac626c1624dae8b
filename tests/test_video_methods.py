"""Every registered de-identification method runs frame by frame through the video pipeline.

Kept apart from ``test_video.py`` because some methods (optimisation- or gallery-based) take
seconds per face; each method gets a two-frame clip.
"""
from __future__ import annotations

import numpy as np
import pytest

from facedeid.errors import MissingWeightsError
from facedeid.methods import available_methods
from facedeid.pipeline import Anonymizer
from facedeid.video import VideoOptions, anonymize_video

from .test_video import audio_packets, decoded, face_box_at, inner, make_clip


@pytest.fixture(scope="module")
def two_frame_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    make_clip(path, frames=2, audio=True)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(available_methods()))
def test_method_runs_on_video(name, two_frame_clip, tmp_path):
    try:
        anonymizer = Anonymizer(name, landmarks="box", seed=3)
    except MissingWeightsError as error:  # e.g. a checkpoint that has not been trained yet
        pytest.skip(f"{name} cannot be built here: {error}")
    if name in ("ksame", "ksame_net"):
        from facedeid.methods.ksame import DEFAULT_GALLERY
        if not (DEFAULT_GALLERY / "identity_split.txt").is_file():
            pytest.skip(f"ksame needs a gallery; its default ({DEFAULT_GALLERY}) is absent here")
    target = tmp_path / f"{name}.mp4"
    report = anonymize_video(two_frame_clip, target, anonymizer, VideoOptions(every=1, progress=False))
    original, *_ = decoded(two_frame_clip)
    frames, *_ = decoded(target)
    assert report.frames == len(frames) == 2
    assert report.tracks == 1
    rows, cols = inner(face_box_at(1, 256, 160))
    change = np.abs(frames[1][rows, cols].astype(int) - original[1][rows, cols]).mean()
    assert change > 3, f"{name} left the face unchanged (mean change {change:.1f})"
    assert audio_packets(target) == audio_packets(two_frame_clip)
