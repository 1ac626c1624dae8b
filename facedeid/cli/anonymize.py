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
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..batch import Outcome, anonymize_image_file, plan_jobs, summarize

    jobs, outcomes = plan_jobs(args.inputs, args.output)
    if not jobs and not outcomes:
        print("facedeid: nothing to do: no image files found in the inputs", file=sys.stderr)
        return 1
    anonymizer = build_anonymizer(args, no_face=args.no_face)
    protected = {job.source.resolve() for job in jobs}
    progress = tqdm(jobs, unit="file", disable=args.quiet or len(jobs) < 2, dynamic_ncols=True)
    for job in progress:
        progress.set_postfix_str(job.source.name[-30:])
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
