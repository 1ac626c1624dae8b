"""Adversarial scenes built from real CelebA faces, shared by the leak tests and
``benchmarks/leak_suite.py``.

Each builder pastes whole CelebA thumbnails (178x218, the face roughly 90 px wide in them)
into a synthetic background at a chosen face width, and returns the scene with the boxes of
the pasted thumbnails, so a test knows where every face is without trusting any detector.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-id200"


def have_celeba() -> bool:
    return (CELEBA / "identity_CelebA.txt").is_file()
FACE_FRACTION = 0.5  # CelebA's aligned face spans about half the thumbnail's width


def celeba_files(count: int, offset: int = 0) -> list[Path]:
    """``count`` CelebA thumbnails of different people (test identities of the disjoint split)."""
    folder = CELEBA / "img_align_celeba"
    people: dict[str, Path] = {}
    tests = set((CELEBA / "test_identities_disjoint.txt").read_text().split())
    for line in (CELEBA / "identity_CelebA.txt").read_text().splitlines():
        name, identity = line.split()
        if identity in tests and identity not in people and (folder / name).exists():
            people[identity] = folder / name
    files = sorted(people.values())[offset:offset + count]
    if len(files) < count:
        raise FileNotFoundError(f"only {len(files)} CelebA test identities available")
    return files


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured, face-free background (low-frequency colour noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, (max(height // 64, 2), max(width // 64, 2), 3)).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def paste_face(canvas: np.ndarray, face: np.ndarray, x: int, y: int, face_width: int
               ) -> np.ndarray:
    """Paste the thumbnail scaled so its face is ``face_width`` px wide; return the face box."""
    scale = face_width / (FACE_FRACTION * face.shape[1])
    size = (max(1, round(face.shape[1] * scale)), max(1, round(face.shape[0] * scale)))
    patch = cv2.resize(face, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    height, width = canvas.shape[:2]
    w, h = min(size[0], width - x), min(size[1], height - y)
    canvas[y:y + h, x:x + w] = patch[:h, :w]
    # The face proper: the central part of the thumbnail (CelebA alignment).
    return np.array([x + 0.25 * size[0], y + 0.3 * size[1], x + 0.75 * size[0],
                     y + 0.85 * size[1]], np.float32)


def big_photo(width: int = 6000, height: int = 4000, face_width: int = 45, count: int = 13,
              seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A large photo with ``count`` small faces spread over it (some on tile borders)."""
    canvas = background(height, width, seed)
    rng = np.random.default_rng(seed)
    boxes = []
    columns = int(np.ceil(np.sqrt(count * width / height)))
    rows = int(np.ceil(count / columns))
    for index, path in enumerate(celeba_files(count)):
        row, column = divmod(index, columns)
        x = int((column + 0.2 + 0.5 * rng.random()) * width / (columns + 0.5))
        y = int((row + 0.2 + 0.5 * rng.random()) * height / (rows + 0.5))
        boxes.append(paste_face(canvas, read_rgb(path), x, y, face_width))
    return canvas, boxes


def region_changed(original: np.ndarray, output: np.ndarray, box: np.ndarray,
                   threshold: float = 12.0) -> bool:
    """Whether the face box was visibly replaced: mean absolute difference above ``threshold``."""
    x0, y0, x1, y1 = [int(round(v)) for v in box]
    before = original[y0:y1, x0:x1].astype(np.float32)
    after = output[y0:y1, x0:x1].astype(np.float32)
    return bool(np.abs(before - after).mean() > threshold)


# -- video scenes ------------------------------------------------------------------------------
def write_clip(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Encode RGB frames near-losslessly (x264 crf 10) so faces survive into the test input."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"crf": "10", "preset": "ultrafast"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_clip(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def flashing_face_clip(width: int = 640, height: int = 360, frames: int = 24,
                       visible: range = range(8, 10), face_width: int = 70,
                       steady_face: bool = True) -> tuple[list[np.ndarray], dict[int, list]]:
    """A face on screen only for the frames in ``visible`` (between detection frames of a
    sparse schedule), next to a face that stays (so "no face at all" warnings cannot help)."""
    people = [read_rgb(path) for path in celeba_files(2)]
    base = background(height, width, seed=5)
    steady = base.copy()
    truth: dict[int, list] = {}
    steady_box = paste_face(steady, people[0], 20, 40, face_width) if steady_face else None
    clip = []
    for index in range(frames):
        frame = steady.copy()
        boxes = [steady_box] if steady_box is not None else []
        if index in visible:
            boxes.append(paste_face(frame, people[1], width // 2, height // 4, face_width))
        truth[index] = boxes
        clip.append(frame)
    return clip, truth


def oscillating_face_clip(width: int = 640, height: int = 360, frames: int = 36,
                          amplitude: int = 90, period: int = 6, face_width: int = 70
                          ) -> tuple[list[np.ndarray], dict[int, list]]:
    """A face moving +-``amplitude`` px with a ``period``-frame cycle: in step with a detector
    that runs every ``period`` frames, it is always seen at the same place."""
    person = read_rgb(celeba_files(1, offset=2)[0])
    base = background(height, width, seed=6)
    clip, truth = [], {}
    for index in range(frames):
        frame = base.copy()
        offset = int(round(amplitude * np.sin(2 * np.pi * index / period)))
        truth[index] = [paste_face(frame, person, width // 2 - 70 + offset, height // 5, face_width)]
        clip.append(frame)
    return clip, truth


def small_faces_4k_clip(frames: int = 3, widths: tuple[int, ...] = (32, 40, 48, 64, 72, 80)
                        ) -> tuple[list[np.ndarray], dict[int, list]]:
    """3840x2160 frames with six faces 32-80 px wide, still."""
    width, height = 3840, 2160
    canvas = background(height, width, seed=7)
    boxes = []
    for index, (path, face_width) in enumerate(zip(celeba_files(len(widths), offset=3), widths)):
        x = 300 + (index % 3) * 1200
        y = 400 + (index // 3) * 1000
        boxes.append(paste_face(canvas, read_rgb(path), x, y, face_width))
    return [canvas.copy() for _ in range(frames)], {i: boxes for i in range(frames)}


def uncovered_faces(originals: list[np.ndarray], outputs: list[np.ndarray],
                    truth: dict[int, list]) -> list[tuple[int, list[float]]]:
    """``(frame, box)`` of every true face whose region the output left visibly unchanged."""
    missed = []
    for index, boxes in truth.items():
        for box in boxes:
            if not region_changed(originals[index], outputs[index], box):
                missed.append((index, [round(float(v)) for v in box]))
    return missed
