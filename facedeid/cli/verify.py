"""``facedeid verify``: audit anonymized outputs for faces that leaked through."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "audit anonymized outputs: does any face of the original still show?"


def _description() -> str:
    from .. import verify as v

    mad, frac, near = v.UNCHANGED_MEAN_DIFFERENCE, v.UNCHANGED_FRACTION, v.NEAR_IDENTICAL_LEVELS
    small, ssim = v.SMALL_FACE, v.SMALL_FACE_SSIM
    return f"""\
Prove, independently of the anonymizer, that ANONYMIZED shows no face of ORIGINAL.

A second detector searches every ORIGINAL image (and every video frame, --every 1) for faces:
by default dlib's HOG at full resolution, upsampled once (CenterFace when the outputs were
anonymized with --detector dlib-hog: the audit uses a different detector, so one detector's
blind spot is not audited by itself). For every face found, the output is judged at the same
place:

  (a) leaked-unchanged   the mean absolute pixel difference in the face box is below
                         {mad:g} grey levels (a JPEG q50 re-encode of an untouched face
                         measures at most 6.6, the mildest real change 12), or {frac:.0%} of
                         the box's pixels are within {near:g} levels of the original;
  (b) leaked-identity    the pixels changed, but dlib's recognizer, embedding the output at the
                         original's box with landmarks located on the original, still finds the
                         same person (distance < 0.6; a flat, solid-filled face region never
                         counts). Faces under {small} px are too small for the recognizer:
                         there an SSIM of the face region >= {ssim:g} counts as kept;
  (c) cross-check        the detector searches the output around each face; a face it finds
                         there that still matches the original is an identity leak too.

A face replaced by someone else's (k-Same, generators) passes; a face left as it was never
does. An original where the audit detector finds no face is reported (nothing to audit).

ORIGINAL and ANONYMIZED may be files or folders. Folders are matched by relative path as
`facedeid anonymize` writes them (ANONYMIZED/<ORIGINAL folder name>/<path>) or as a plain
mirror (ANONYMIZED/<path>); an original without an output is reported as missing (nothing
was published). Videos are decoded in lockstep, rotation applied, and leaks are listed per
frame with time stamps.

exit status: 0 no leak, 1 a leak (or a pair that could not be audited), 2 usage error.

dlib's HOG misses profile, dark and small (< 40 px) faces; on video especially, add CenterFace
(--detector dlib-hog,centerface): on 60 frames of a 640x360 crowd clip HOG found 19 faces, the
pair 121, among them background faces the video pipeline had left untouched.

examples:
  facedeid verify photos/ anon/
  facedeid verify clip.mp4 clip_anon.mp4 --detector dlib-hog,centerface
  facedeid verify clip.mp4 clip_anon.mp4 --every 5 --json audit.json
  facedeid verify photos/ anon/ --fix -m mosaic     re-anonymize leaked faces in place
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("verify", help=HELP, description=_description(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original", metavar="ORIGINAL", help="original image/video file or folder")
    parser.add_argument("anonymized", metavar="ANONYMIZED",
                        help="its anonymized counterpart (file or folder)")
    parser.add_argument("--detector", metavar="NAME[,NAME]", default=None,
                        help="audit detector(s), comma-separated to use several (default: "
                             "dlib-hog; centerface when --anonymized-with dlib-hog)")
    parser.add_argument("--anonymized-with", metavar="NAME", default=None,
                        help="detector the outputs were anonymized with (default: read from an "
                             "OUTPUT.json sidecar when there is one, else centerface)")
    parser.add_argument("--json", metavar="FILE", help="write the full report as JSON to FILE")
    parser.add_argument("--every", type=int, default=1, metavar="K",
                        help="video: audit every K-th frame (default: 1, every frame)")
    parser.add_argument("--max-frames", type=int, metavar="N",
                        help="video: stop after N frames")
    parser.add_argument("--no-cross-check", action="store_true",
                        help="skip check (c) (saves one detector pass around each face)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    fix = parser.add_argument_group(
        "fix", "re-anonymize leaked faces of image outputs in place (atomically); faces still "
               "leaking after that are pixelated, then filled with a flat colour; the fixed "
               "file is audited again. Video outputs are reported, not fixed.")
    fix.add_argument("--fix", action="store_true", help="fix leaking image outputs")
    fix.add_argument("-m", "--method", default="mosaic",
                     help="method for re-anonymizing (default: mosaic)")
    fix.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                     help="method parameter, repeatable")
    fix.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default: 95)")
    parser.set_defaults(handler=run)


def _anonymizer_detector(args, original: Path, anonymized: Path) -> str | None:
    """The detector named on the command line, or in the first sidecar found, or None."""
    from ..io.images import IMAGE_SUFFIXES

    if args.anonymized_with:
        return args.anonymized_with
    if anonymized.is_file():
        candidates = [anonymized.with_name(anonymized.name + ".json")]
    else:  # sidecars are named OUTPUT.<image suffix>.json; an audit report is not one
        candidates = (path for path in sorted(anonymized.rglob("*.*.json"))
                      if Path(path.stem).suffix.lower() in IMAGE_SUFFIXES)
    for sidecar in candidates:
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "method" in data and isinstance(data.get("detector"), str):
            return data["detector"]
    return None


def run(args: argparse.Namespace) -> int:
    from ..errors import FaceDeidError
    from ..verify import LeakAuditor, fix_file, pair_paths

    if args.every < 1 or (args.max_frames is not None and args.max_frames < 1):
        print("facedeid verify: --every and --max-frames must be >= 1", file=sys.stderr)
        return 2
    original, anonymized = Path(args.original), Path(args.anonymized)
    try:
        pair_paths(original, anonymized)  # usage errors (missing paths) before loading models
    except FaceDeidError as error:
        print(f"facedeid verify: {error}", file=sys.stderr)
        return 2
    auditor = LeakAuditor(args.detector,
                          anonymizer_detector=_anonymizer_detector(args, original, anonymized),
                          cross_check=not args.no_cross_check)
    summary = auditor.audit_paths(original, anonymized, every=args.every,
                                  max_frames=args.max_frames, progress=not args.quiet)
    if args.fix and summary.leaked:
        from .common import parse_params
        from ..pipeline import Anonymizer

        anonymizer = Anonymizer(args.method, parse_params(args.param), no_face="keep")
        summary.reports = [
            fix_file(report.original, report.output, report, anonymizer, auditor=auditor,
                     quality=args.quality) if report.leaked else report
            for report in summary.reports]
    print_report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=2))
    return 0 if summary.proven else 1


def print_report(summary) -> None:
    """Human-readable report: one line per leak (per frame for video), then the totals."""
    for report in summary.reports:
        if report.status == "missing":
            continue
        if report.status == "error":
            print(f"ERROR    {report.original}: {report.error}")
            continue
        for finding in report.leaks:
            where = ""
            if finding.frame is not None:
                stamp = "" if finding.time is None else f" t={finding.time:.3f}s"
                where = f" frame {finding.frame}{stamp}"
            box = ",".join(str(int(round(float(v)))) for v in finding.box)
            score = "" if finding.score is None else f" (detector score {finding.score:.2f})"
            print(f"LEAK     {report.output}{where} box [{box}]{score}: {finding.verdict}: "
                  f"{finding.reason}")
        if report.fixed:
            state = "still leaking" if report.leaked else "audited again: clean"
            print(f"FIXED    {report.output}: {report.fixed} face(s) re-anonymized; {state}")
        for warning in report.warnings:
            print(f"note     {report.original}: {warning}")
    counts = summary.counts()
    statuses = summary.to_dict()["by_status"]
    files = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    leaked_files = sum(report.leaked for report in summary.reports)
    print(f"{len(summary.reports)} file(s) ({files}), audit detector {summary.detector}: "
          f"{sum(counts.values())} face(s) checked, {counts['ok']} ok, "
          f"{counts['leaked-unchanged']} leaked unchanged, {counts['leaked-identity']} leaked "
          f"identity; {leaked_files} file(s) leak")
    print("verdict: " + ("NO LEAK" if summary.proven else
                         "LEAK" if summary.leaked else "NOT PROVEN (see errors above)"))
