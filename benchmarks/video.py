"""Video benchmark: facedeid vs ``deface==1.5.0`` on the same clips, machine and run.

What it measures (see ``docs/benchmarks.md`` for results and the exact command):

* **Throughput** (median over ``--repeats`` runs, each with the 1-minute load average
  after it, since the machine may be shared; frames per wall-clock second, decode → detect
  → anonymize → encode, files in and out) of deface with its defaults (CenterFace at full
  resolution on every frame, threshold 0.2, blur, libx264 through imageio-ffmpeg) and of facedeid with its video
  defaults, on one real clip resized to 640x360, 1280x720 and 1920x1080; plus facedeid with
  mosaic with x264 ``ultrafast`` at 1280x720 (speed / file size trade-off).
* **Face recall** of both against an independent reference: dlib's MMOD CNN detector
  (upsample 1) on every ``--ref-every``-th frame of the *native* clip, boxes scaled to each
  size. A reference face counts as found when >= 70 % of its box lies inside the tool's
  anonymized region (each tool's own mask geometry: deface's ellipse in the box grown by
  its mask scale, facedeid's ellipse in the box times ``expand``).
* **Audio**: the facedeid outputs' audio packets compared byte for byte with the input's.
* **Memory**: resident set size of a facedeid process sampled every 0.5 s over the longest
  clip (people_walking_away, 2 min 19 s).

Run from the repo root:  ``python benchmarks/video.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
VIDEO_DIR = REPO.parent / "shared" / "data" / "video"
SIZES = ((640, 360), (1280, 720), (1920, 1080))
COVERED = 0.7  # fraction of a reference box inside the anonymized region to count as found


def resize_clip(source: Path, target: Path, size: tuple[int, int], frames: int) -> None:
    """First ``frames`` frames of ``source`` scaled to ``size`` (near-lossless), audio copied."""
    if target.exists():
        return
    with av.open(str(source)) as probe:  # start at t=0: deface (imageio) pads a late start
        start = next(probe.decode(video=0)).time
    with av.open(str(source)) as src:
        video = src.streams.video[0]
        tmp = target.with_suffix(".part.mp4")
        out = av.open(str(tmp), "w")
        stream = out.add_stream("libx264", rate=video.average_rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = video.time_base
        stream.codec_context.options = {"crf": "14", "preset": "veryfast"}
        audio = {s.index: out.add_stream_from_template(s) for s in src.streams.audio}
        end_time = None
        count = 0
        for packet in src.demux(video, *src.streams.audio):
            if packet.stream.type == "audio":
                if packet.dts is None or not packet.size:
                    continue
                shift = int(round(start / packet.time_base))
                if packet.pts - shift < 0 or (end_time is not None
                                              and packet.pts * packet.time_base > end_time):
                    continue
                packet.pts -= shift
                packet.dts -= shift
                packet.stream = audio[packet.stream.index]
                out.mux(packet)
                continue
            for frame in packet.decode():
                if count >= frames:
                    end_time = end_time or frame.time - start
                    continue
                scaled = frame.reformat(width=size[0], height=size[1], format="yuv420p",
                                        interpolation="LANCZOS")
                scaled.pts = frame.pts - int(round(start / frame.time_base))
                scaled.time_base = frame.time_base
                out.mux(stream.encode(scaled))
                count += 1
        out.mux(stream.encode(None))
        out.close()
        tmp.rename(target)


def reference_faces(source: Path, frames: int, every: int, cache: Path) -> dict[str, dict]:
    """Reference boxes on every ``every``-th native frame, normalised to [0, 1] coordinates.

    Two references, reported separately: ``dlib-cnn`` (MMOD CNN, upsample 1; a different
    model from both tools, weak on faces under ~40 px) and ``centerface-3x`` (CenterFace at
    threshold 0.5 on the frame upscaled 3x, i.e. full resolution of the 1920x1080 clip; the
    same network deface and facedeid use, so it favours whoever detects at full size).
    """
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("frames") == frames and data.get("every") == every:
            return {name: {int(k): v for k, v in boxes.items()} for name, boxes in data["boxes"].items()}
    import cv2

    from facedeid.detection import create_detector

    detectors = {"dlib-cnn": (create_detector("dlib-cnn", upsample=1, max_side=None), 1),
                 "centerface-3x": (create_detector("centerface", score_threshold=0.5, max_side=None), 3)}
    boxes: dict[str, dict[int, list]] = {name: {} for name in detectors}
    with av.open(str(source)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= frames:
                break
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
            print(f"  reference frame {index}: " + ", ".join(
                f"{name} {len(boxes[name][index])}" for name in boxes), flush=True)
    cache.write_text(json.dumps({"frames": frames, "every": every, "boxes": boxes}))
    return boxes


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


def recall(reference: dict[int, list], regions: dict[int, list[np.ndarray]],
           size: tuple[int, int]) -> tuple[float, int]:
    """Share of reference faces with >= COVERED of their box inside the anonymized region."""
    width, height = size
    found = total = 0
    for index, boxes in reference.items():
        mask = ellipse_mask((height, width), regions.get(index, []))
        for box in boxes:
            x0, y0, x1, y1 = (np.array(box) * [width, height, width, height]).round().astype(int)
            x0, y0 = max(x0, 0), max(y0, 0)
            window = mask[y0:y1, x0:x1]
            total += 1
            found += bool(window.size and window.mean() >= COVERED)
    return (found / total if total else float("nan")), total


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children (imageio's ffmpeg)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_deface(source: Path, target: Path) -> tuple[float, float, int, dict[int, list[np.ndarray]]]:
    """deface's video path with its CLI defaults, in-process; records its anonymized regions."""
    import deface.deface as deface_module
    from deface.centerface import CenterFace

    regions: dict[int, list[np.ndarray]] = {}
    original = deface_module.anonymize_frame

    def recording(dets, frame, mask_scale, *args, **kwargs):
        boxes = []
        for det in dets:  # deface's own geometry: scale_bb then clip (see deface.anonymize_frame)
            x0, y0, x1, y1 = deface_module.scale_bb(*det[:4].astype(int), mask_scale)
            boxes.append(np.array([max(0, x0), max(0, y0), min(frame.shape[1] - 1, x1),
                                   min(frame.shape[0] - 1, y1)], np.float32))
        regions[len(regions)] = boxes
        return original(dets, frame, mask_scale, *args, **kwargs)

    deface_module.anonymize_frame = recording
    try:
        started, cpu = time.perf_counter(), cpu_seconds()
        centerface = CenterFace(in_shape=None, backend="auto")
        deface_module.video_detect(
            ipath=str(source), opath=str(target), centerface=centerface, threshold=0.2,
            enable_preview=False, cam=False, nested=False, replacewith="blur", mask_scale=1.3,
            ellipse=True, draw_scores=False, ffmpeg_config={"codec": "libx264"})
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    finally:
        deface_module.anonymize_frame = original
    return seconds, cpu, len(regions), regions


def run_facedeid(source: Path, target: Path, method: str, options: dict) -> tuple[float, float, int, dict]:
    from facedeid.pipeline import Anonymizer
    from facedeid.video import VideoOptions, anonymize_video

    boxes_out = target.with_suffix(".json")
    started, cpu = time.perf_counter(), cpu_seconds()
    anonymizer = Anonymizer(method, landmarks="box")
    report = anonymize_video(source, target, anonymizer,
                             VideoOptions(progress=False, boxes_out=boxes_out, **options))
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    expand = anonymizer.expand
    regions = {}
    for entry in json.loads(boxes_out.read_text())["frames"]:
        grown = []
        for face in entry["faces"]:
            x0, y0, x1, y1 = face["box"]
            cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
            grown.append(np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32))
        regions[entry["frame"]] = grown
    return seconds, cpu, report.frames, regions


def audio_identical(a: Path, b: Path) -> bool | None:
    with av.open(str(a)) as x, av.open(str(b)) as y:
        if not x.streams.audio:
            return None
        if not y.streams.audio:
            return False
        first = [bytes(p) for p in x.demux(x.streams.audio[0]) if p.size]
        second = [bytes(p) for p in y.demux(y.streams.audio[0]) if p.size]
    return first == second


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
            "rss_mb_peak": round(float(rss.max()), 1) if n else None,
            "samples": samples[:: max(n // 40, 1)]}


def _recalls(references: dict, regions: dict, size: tuple[int, int]) -> dict:
    out = {}
    for name, reference in references.items():
        found, total = recall(reference, regions, size)
        out[f"recall_{name}"] = round(found, 3)
        out[f"faces_{name}"] = total
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(VIDEO_DIR / "two_faces_640x360.mp4"))
    parser.add_argument("--frames", type=int, default=275, help="frames of the clip to use")
    parser.add_argument("--ref-every", type=int, default=10, help="reference on every N-th frame")
    parser.add_argument("--sizes", default="640x360,1280x720,1920x1080")
    parser.add_argument("--memory-clip", default=str(VIDEO_DIR / "people_walking_away_768x432.mp4"))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-deface", action="store_true")
    parser.add_argument("--repeats", type=int, default=3,
                        help="facedeid runs per setting; the median is reported")
    parser.add_argument("--deface-repeats", type=int, default=1,
                        help="deface runs per size (slow); the median is reported")
    parser.add_argument("--workdir", default=None, help="where resized clips and outputs go")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "video.json"))
    args = parser.parse_args(argv)
    source = Path(args.clip)
    if not source.exists():
        print(f"needs {source} (the shared video clips)", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="facedeid-video-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    load_before = os.getloadavg()
    results: dict = {"clip": source.name, "frames": args.frames, "cpu_count": os.cpu_count(),
                     "load_average_before": [round(v, 2) for v in load_before], "sizes": []}
    print(f"references on every {args.ref_every}th frame of {source.name}", flush=True)
    references = reference_faces(source, args.frames, args.ref_every,
                                 workdir / f"reference_{source.stem}.json")
    results["references"] = {name: {"frames": len(ref), "faces": sum(map(len, ref.values()))}
                             for name, ref in references.items()}
    for size in sizes:
        clip = workdir / f"{source.stem}_{size[0]}x{size[1]}.mp4"
        resize_clip(source, clip, size, args.frames)
        row: dict = {"size": f"{size[0]}x{size[1]}"}
        # facedeid's default method is mosaic; blur is deface's default, so both are timed.
        runs = [("facedeid_mosaic", "mosaic", {}), ("facedeid_blur", "blur", {})]
        if size == (1280, 720):  # the file-size / speed trade-off of the fastest x264 preset
            runs.append(("facedeid_mosaic_ultrafast", "mosaic", {"preset": "ultrafast"}))
        for name, method, options in runs:
            timings = []
            for _ in range(args.repeats):  # the median of several runs: the machine is shared
                seconds, cpu, frames, regions = run_facedeid(
                    clip, workdir / f"{name}_{row['size']}.mp4", method, options)
                timings.append((frames / seconds, 1000 * cpu / frames, os.getloadavg()[0]))
            fps, cpu_ms, load = (float(np.median([t[k] for t in timings])) for k in range(3))
            row[name] = {"fps": round(fps, 2), "cpu_ms_per_frame": round(cpu_ms, 1),
                         "fps_runs": [round(t[0], 2) for t in timings],
                         "load_average_1min": round(load, 2),
                         "frames": frames, **_recalls(references, regions, size),
                         "audio_identical": audio_identical(clip, workdir / f"{name}_{row['size']}.mp4"),
                         "output_kb": (workdir / f"{name}_{row['size']}.mp4").stat().st_size // 1024}
            print(f"  {row['size']} {name}: {row[name]}", flush=True)
        if not args.skip_deface:
            timings = []
            for _ in range(args.deface_repeats):
                seconds, cpu, frames, regions = run_deface(clip, workdir / f"deface_{row['size']}.mp4")
                timings.append((frames / seconds, 1000 * cpu / frames, os.getloadavg()[0]))
            fps, cpu_ms, load = (float(np.median([t[k] for t in timings])) for k in range(3))
            row["deface"] = {"fps": round(fps, 2), "cpu_ms_per_frame": round(cpu_ms, 1),
                             "fps_runs": [round(t[0], 2) for t in timings],
                             "load_average_1min": round(load, 2),
                             "frames": frames, **_recalls(references, regions, size),
                             "output_kb": (workdir / f"deface_{row['size']}.mp4").stat().st_size // 1024}
            for name, _, _ in runs:
                row[f"speedup_{name}"] = {
                    "wall": round(row[name]["fps"] / row["deface"]["fps"], 2),
                    "cpu": round(row["deface"]["cpu_ms_per_frame"] / row[name]["cpu_ms_per_frame"], 2)}
            print(f"  {row['size']} deface: {row['deface']}  speed-ups "
                  f"{ {k: v for k, v in row.items() if k.startswith('speedup')} }",
                  flush=True)
        results["sizes"].append(row)
    if not args.skip_memory and Path(args.memory_clip).exists():
        results["memory"] = memory_profile(Path(args.memory_clip), workdir, "mosaic")
        print(f"  memory: { {k: v for k, v in results['memory'].items() if k != 'samples'} }")
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "memory"}, indent=2))
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
