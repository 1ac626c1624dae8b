"""``facedeid anonymize``: de-identify image files and folders."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..io.images import DEFAULT_MAX_PIXELS
from ..pipeline import NO_FACE_POLICIES
from .common import add_detector_arguments, add_method_arguments, build_anonymizer

HELP = "de-identify faces in images and folders"
DESCRIPTION = """\
De-identify every face in the given images and folders.

Folders are walked recursively and mirrored under OUTDIR (an OUTDIR inside an input folder is
not walked). Inputs are never overwritten; results are written atomically, without EXIF/GPS
metadata unless --keep-metadata. A bad file is reported and the batch goes on; the exit code
is 1 when any file failed.

examples:
  facedeid anonymize photo.jpg -o photo_anon.jpg
  facedeid anonymize photos/ -o anon/ --method blindfold --json
  facedeid anonymize photos/ -o anon/ --method laplace --param lam=0.2 --seed 7
  facedeid anonymize scans/ -o anon/ --no-face obfuscate
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("anonymize", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image/video files and/or folders; for video also a webcam index or URL")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output folder (or an output file name for a single input file)")
    add_method_arguments(parser)
    add_detector_arguments(parser)
    out = parser.add_argument_group("output")
    policies = "; ".join(f"{k}: {v}" for k, v in NO_FACE_POLICIES.items())
    out.add_argument("--no-face", choices=list(NO_FACE_POLICIES), default="keep",
                     help=f"images where no face is found (default: keep). {policies}")
    out.add_argument("--keep-metadata", action="store_true",
                     help="copy EXIF into outputs (GPS still removed unless --keep-gps)")
    out.add_argument("--keep-gps", action="store_true", help="with --keep-metadata, keep GPS tags too")
    out.add_argument("--json", action="store_true",
                     help="write OUTPUT.json beside each output with the faces found")
    out.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default: 95)")
    out.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help=f"refuse larger images (default: {DEFAULT_MAX_PIXELS:,})")
    out.add_argument("--summary", metavar="FILE", help="also write the run summary as JSON here")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_video_arguments(parser)
    parser.set_defaults(handler=run)


def _add_video_arguments(parser) -> None:
    from ..video.io import PRESETS
    from ..video.pipeline import VideoOptions

    d = VideoOptions()
    video = parser.add_argument_group(
        "video", "inputs may also be a webcam index (0) or a stream URL (rtsp://..., http://...)")
    video.add_argument("--every", type=int, metavar="K", default=d.every,
                       help=f"detect on every K-th frame, track in between (default: {d.every})")
    video.add_argument("--det-scale", type=int, metavar="PX", default=d.det_scale,
                       help=f"detect on frames scaled to this longest side; 0 = full size "
                            f"(default: {d.det_scale})")
    video.add_argument("--video-threshold", type=float, default=d.threshold, metavar="T",
                       help=f"score that starts a face track (default: {d.threshold}); tracked "
                            f"faces are kept down to {d.keep_threshold}")
    video.add_argument("--max-gap", type=int, metavar="M", default=d.max_gap,
                       help=f"keep a face anonymized up to M frames after the detector lost it, "
                            f"its mask growing (default: {d.max_gap})")
    video.add_argument("--codec", default=None,
                       help="video encoder (default: libx264; gif for .gif outputs)")
    video.add_argument("--crf", type=int, default=d.crf, help=f"encoder quality, lower is better "
                       f"(default: {d.crf})")
    video.add_argument("--preset", choices=PRESETS, default=d.preset,
                       help=f"encoder speed preset (default: {d.preset})")
    video.add_argument("--no-audio", action="store_true",
                       help="drop audio (default: copy it unchanged, packet for packet)")
    video.add_argument("--boxes-out", metavar="FILE",
                       help="write per-frame face boxes and track ids as JSON to FILE, or, when FILE "
                            "is an existing folder, to FOLDER/<output name>.boxes.json per video")
    video.add_argument("--boxes-in", metavar="FILE",
                       help="use these per-frame boxes (the --boxes-out format) instead of detecting")
    video.add_argument("--max-frames", type=int, metavar="N",
                       help="stop after N frames (for webcams and streams)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..batch import Outcome, anonymize_image_file, plan_jobs, summarize

    jobs, outcomes = plan_jobs(*_split_live_inputs(args))
    if not jobs and not outcomes and not args.live_inputs:
        print("facedeid: nothing to do: no image files found in the inputs", file=sys.stderr)
        return 1
    anonymizer = build_anonymizer(args, no_face=args.no_face)
    jobs = _live_jobs(args) + jobs
    protected = {job.source.resolve() for job in jobs if isinstance(job.source, Path)}
    progress = tqdm(jobs, unit="file", disable=args.quiet or len(jobs) < 2, dynamic_ncols=True)
    for job in progress:
        progress.set_postfix_str(Path(str(job.source)).name[-30:])
        if job.kind == "video":
            outcome = _run_video(job, anonymizer, args, protected)
        else:
            outcome = anonymize_image_file(job, anonymizer, protected=protected,
                                           keep_metadata=args.keep_metadata, keep_gps=args.keep_gps,
                                           write_json=args.json, quality=args.quality,
                                           max_pixels=args.max_pixels)
        outcomes.append(outcome)
        if outcome.status == "failed":
            tqdm.write(f"FAILED  {outcome.source}: {outcome.error}", file=sys.stderr)
        for warning in outcome.warnings:
            tqdm.write(f"warning {outcome.source}: {warning}", file=sys.stderr)
    summary = summarize(outcomes)
    _print_summary(summary, args.output)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2))
    return 1 if summary["failures"] else 0


def _split_live_inputs(args) -> tuple[list[str], str]:
    """Webcam indices and stream URLs are not files: keep them out of the file planner."""
    from ..video.io import is_live_source

    args.live_inputs = [item for item in args.inputs if is_live_source(item)]
    return [item for item in args.inputs if item not in args.live_inputs], args.output


def _live_jobs(args) -> list:
    """One video job per webcam/stream; the output is OUT itself when it names a video file."""
    from ..batch import VIDEO_SUFFIXES, Job

    jobs = []
    output = Path(args.output)
    for index, spec in enumerate(args.live_inputs):
        if output.suffix.lower() in VIDEO_SUFFIXES and len(args.live_inputs) == 1:
            target = output
        else:
            stem = f"webcam{spec}" if spec.isdigit() else f"stream{index}"
            target = output / f"{stem}.mp4"
        jobs.append(Job(spec, target, "video"))  # source stays a str: a URL is no Path
    return jobs


def _run_video(job, anonymizer, args, protected):
    from ..batch import Outcome
    try:
        from ..video import anonymize_video_job
    except ImportError:
        return Outcome(str(job.source), None, "failed",
                       error="video input needs the video pipeline (facedeid.video), not available")
    return anonymize_video_job(job, anonymizer, args, protected=protected)


def _print_summary(summary: dict, output: str) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["by_status"].items()))
    print(f"{summary['files']} file(s): {counts}; {summary['faces']} face(s) de-identified -> {output}")
    if summary["without_faces"]:
        print(f"  {len(summary['without_faces'])} file(s) had no detected face "
              "(see --no-face); check them by eye before publishing")
    for failure in summary["failures"]:
        print(f"  failed: {failure['source']}: {failure['error']}")
