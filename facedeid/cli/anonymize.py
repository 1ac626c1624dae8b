"""``facedeid anonymize``: de-identify image files and folders."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..engines import add_engine_arguments
from ..errors import InvalidParameterError
from ..io.images import DEFAULT_MAX_PIXELS
from ..pipeline import NO_FACE_POLICIES
from .common import add_detector_arguments, add_method_arguments, build_anonymizer

HELP = "de-identify faces in images and folders"
DESCRIPTION = """\
De-identify every face in the given images and folders.

Folders are walked recursively and mirrored under OUTDIR (an OUTDIR inside an input folder is
not walked). Inputs are never overwritten: no output, .json sidecar, --boxes-out or --summary
path may be an input, and results stay inside OUTDIR. Results are written atomically (no
partial file is left, also on disk full or SIGTERM), without EXIF/GPS metadata unless
--keep-metadata. Every page of a multi-page TIFF and every frame of an animated WebP/PNG is
anonymized and written back. A bad file is reported and the batch goes on. The summary names
every file to check by eye: no face found, warnings, unsupported types (e.g. HEIC), failures;
files of unknown type are counted.

exit codes: 0 all done; 1 a file failed or was unsupported; 2 bad options or paths (nothing
was done); 130 Ctrl-C; 143 SIGTERM.

examples:
  facedeid anonymize photo.jpg -o photo_anon.jpg
  facedeid anonymize photos/ -o anon/ --method blindfold --json
  facedeid anonymize photos/ -o anon/ --method laplace --param lam=0.2 --seed 7
  facedeid anonymize scans/ -o anon/ --no-face obfuscate
  facedeid anonymize celeba/ -o anon/ --expect-faces --verify fix
  facedeid anonymize celeba/ -o anon/ --engine ray --address 10.0.0.1:6379
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
    out.add_argument("--no-face", choices=list(NO_FACE_POLICIES), default=None,
                     help="images where no face is found, after a second detector, rotations and "
                          f"a 2x pass also found none (default: keep; obfuscate with "
                          f"--expect-faces). {policies}")
    out.add_argument("--expect-faces", action="store_true",
                     help="every input shows a face (a face dataset): 'no face found' means the "
                          "detectors failed, so the whole image is obfuscated unless --no-face "
                          "says otherwise")
    out.add_argument("--verify", nargs="?", const="report", choices=("report", "fix"),
                     help="after writing each output, audit it with an independent detector and "
                          "recognizer (see `facedeid verify --help`): 'report' (the default when "
                          "given alone) lists leaks and exits 1; 'fix' re-anonymizes leaked image "
                          "faces and audits again. The audit goes into the --json sidecar")
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
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def _add_video_arguments(parser) -> None:
    from ..video.io import PRESETS
    from ..video.pipeline import VideoOptions

    d = VideoOptions()
    video = parser.add_argument_group(
        "video", "inputs may also be a webcam index (0) or a stream URL (rtsp://..., http://...)")
    video.add_argument("--every", type=int, metavar="K", default=d.every,
                       help=f"search every K-th frame at --det-scale, track in between; a face "
                            f"on screen for K frames is searched at least once (default: {d.every})")
    video.add_argument("--det-scale", type=int, metavar="PX", default=d.det_scale,
                       help=f"longest side frames are scaled to for the every-K search; 0 = full "
                            f"size on every searched frame (slow on large frames) "
                            f"(default: {d.det_scale})")
    video.add_argument("--full-every", type=int, metavar="N", default=d.full_every,
                       help=f"also search every N-th frame at full resolution (tiled) for small "
                            f"faces, covering them back to the previous such search "
                            f"(default: {d.full_every})")
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
    from contextlib import ExitStack
    from functools import partial

    from tqdm import tqdm

    from ..batch import JobSettings, build_auditor, plan_batch, run_jobs, summarize
    from ..io.images import write_bytes_atomic

    files, live = _split_live_inputs(args)
    if args.method == "password" and not args.json:
        # `facedeid restore` needs the per-file salt and the face positions
        args.json = True
        print("facedeid: --method password writes a .json sidecar beside each output; keep it "
              "with the image, `facedeid restore` needs it", file=sys.stderr)
    if args.engine == "ray" and live:
        raise InvalidParameterError("--engine ray processes files; webcams and streams run "
                                    "with the local engine")
    # Every path this run writes is checked against every input before any work (exit 2).
    plan = plan_batch(files, args.output, live=live, sidecars=args.json,
                      boxes_out=args.boxes_out, boxes_in=args.boxes_in, summary=args.summary)
    if not plan.jobs and not plan.outcomes:
        ignored = sum(plan.ignored.values())
        print("facedeid: nothing to do: no image or video files found in the inputs"
              + (f" ({ignored} file(s) of unknown type ignored)" if ignored else ""),
              file=sys.stderr)
        return 1
    if args.method == "password" and (live or any(job.kind == "video" for job in plan.jobs)):
        print("facedeid: note: video outputs of --method password keep one replacement identity "
              "per track but cannot be restored (`facedeid restore` takes images)", file=sys.stderr)
    # Built here with either engine, so bad method or detector options fail (exit 2) before
    # any work; the Ray actors build their own from the same options.
    anonymizer = build_anonymizer(args, no_face=args.no_face, expect_faces=args.expect_faces)
    settings = JobSettings(keep_metadata=args.keep_metadata, keep_gps=args.keep_gps,
                           write_json=args.json, quality=args.quality, max_pixels=args.max_pixels,
                           verify=args.verify,
                           video=_video_options(args) if any(job.kind == "video"
                                                             for job in plan.jobs) else None)
    job_outcomes = [None] * len(plan.jobs)
    with ExitStack() as stack:
        if args.engine == "ray":
            from ..engines.ray_engine import ray_cluster, run_jobs_on_ray
            stack.enter_context(ray_cluster(args.address))  # unreachable: exit 2, nothing written
            finished = run_jobs_on_ray(
                plan.jobs, partial(build_anonymizer, args, no_face=args.no_face,
                                   expect_faces=args.expect_faces),
                settings, protected=plan.protected, num_actors=args.num_actors)
        else:
            finished = run_jobs(plan.jobs, anonymizer, settings, protected=plan.protected,
                                auditor=build_auditor(settings, anonymizer))
        progress = stack.enter_context(tqdm(total=len(plan.jobs), unit="file", dynamic_ncols=True,
                                            disable=args.quiet or len(plan.jobs) < 2))
        for index, outcome in finished:
            job_outcomes[index] = outcome
            progress.update()
            progress.set_postfix_str(Path(outcome.source).name[-30:])
            if outcome.status == "failed":
                tqdm.write(f"FAILED  {outcome.source}: {outcome.error}", file=sys.stderr)
            for warning in outcome.warnings:
                tqdm.write(f"warning {outcome.source}: {warning}", file=sys.stderr)
    outcomes = list(plan.outcomes) + job_outcomes  # job order, whichever finished first
    summary = summarize(outcomes, ignored=plan.ignored, hidden=plan.hidden)
    _print_summary(summary, args.output)
    if args.summary:
        try:
            write_bytes_atomic(args.summary, json.dumps(summary, indent=2).encode(),
                               protected=plan.protected)
        except OSError as error:  # e.g. the disk filled up: the results above stand
            print(f"facedeid: could not write the summary {args.summary}: {error}", file=sys.stderr)
            return 1
    return 1 if summary["failures"] or summary["unsupported"] or summary["leaked"] else 0


def _split_live_inputs(args) -> tuple[list[str], list[str]]:
    """Webcam indices and stream URLs are not files: keep them out of the file walk."""
    from ..video.io import is_live_source

    live = [item for item in args.inputs if is_live_source(item)]
    return [item for item in args.inputs if item not in live], live


def _video_options(args):
    """The video group's options as :class:`~facedeid.video.VideoOptions` (each job's own
    ``--boxes-out`` file is filled in by :func:`facedeid.batch.process_job`)."""
    from ..video import VideoOptions

    return VideoOptions(
        every=args.every, det_scale=args.det_scale or None, full_every=args.full_every,
        threshold=args.video_threshold, max_gap=args.max_gap, codec=args.codec, crf=args.crf,
        preset=args.preset, audio=not args.no_audio,
        boxes_in=Path(args.boxes_in) if args.boxes_in else None,
        progress=not args.quiet, max_frames=args.max_frames)


def _print_summary(summary: dict, output: str) -> None:
    """The run in a few lines, naming every file a person must look at before publishing."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["by_status"].items()))
    print(f"{summary['files']} file(s): {counts}; {summary['faces']} face(s) de-identified -> {output}")
    ignored = summary["ignored"]
    if ignored["files"] or summary["hidden"]:
        kinds = ", ".join(f"{suffix} {n}" for suffix, n in ignored["by_suffix"].items())
        print(f"  ignored: {ignored['files']} file(s) of unknown type"
              + (f" ({kinds})" if kinds else "")
              + (f"; {summary['hidden']} hidden file(s)/folder(s)" if summary["hidden"] else ""))
    if summary["without_faces"]:
        print(f"  {len(summary['without_faces'])} file(s) had no detected face "
              "(see --no-face); check them by eye before publishing:")
        for source in summary["without_faces"]:
            print(f"    no face: {source}")
    if summary["leaked"]:
        print(f"  LEAK: the audit (--verify) found faces left in {len(summary['leaked'])} "
              "file(s); do not publish them:")
        for source in summary["leaked"]:
            print(f"    leaked: {source}")
    if summary["weak"]:
        print(f"  {len(summary['weak'])} file(s) with warnings; check them by eye:")
        for item in summary["weak"]:
            print(f"    weak: {item['source']}: {'; '.join(item['warnings'])}")
    for item in summary["unsupported"]:
        print(f"  unsupported: {item['source']}: {item['reason']}")
    for failure in summary["failures"]:
        print(f"  failed: {failure['source']}: {failure['error']}")
