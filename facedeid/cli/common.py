"""Options shared by several sub-commands (method choice and parameters, detector knobs)."""
from __future__ import annotations

import argparse
import math

from ..detection import DETECTORS
from ..methods.registry import parse_params  # noqa: F401 - the one parser, re-exported for the CLI


def finite_float(text: str) -> float:
    """argparse type: a finite float; ``nan`` and ``inf`` are refused (a ``nan`` threshold
    compares false with every score and would silently keep every face unchanged)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (counts of workers, actors, files, pixels)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def bounded_float(minimum: float | None = None, maximum: float | None = None):
    """argparse type factory: a finite float within ``[minimum, maximum]`` (either may be open).

    The error names the bound, so ``--expand 0.5`` answers with a usage message and exit code 2
    instead of a traceback from deep inside the pipeline.
    """
    def parse(text: str) -> float:
        value = finite_float(text)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        return value

    parse.__name__ = "number"  # argparse prints "invalid number value" on a bad conversion
    return parse


def add_method_arguments(parser: argparse.ArgumentParser, allow_weak_option: bool = True) -> None:
    """``-m/-p/--seed``, and ``--allow-weak`` where weak settings are refused by default (the
    evaluator accepts them: measuring how weak a setting is, is its job)."""
    group = parser.add_argument_group("method")
    group.add_argument("-m", "--method", default="mosaic",
                       help="de-identification method (default: mosaic; see `facedeid methods`)")
    group.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                       help="method parameter, repeatable (e.g. --param block_size=12)")
    group.add_argument("--seed", type=int, default=None,
                       help="seed for stochastic methods (default: fresh randomness)")
    if not allow_weak_option:
        return
    group.add_argument("--allow-weak", action="store_true",
                       help="accept method parameters outside the range where the method still "
                            "de-identifies (e.g. mosaic block_size=1); the result is reported as "
                            "weak. Default: such parameters are refused")


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detection")
    group.add_argument("--detector", default="centerface", choices=list(DETECTORS),
                       help="face detector (default: centerface)")
    group.add_argument("--threshold", type=finite_float, default=None,
                       help="detector score threshold, on the detector's own scale (default: the "
                            "detector's own; centerface 0.5 in [0, 1], dlib HOG an SVM margin, 0)")
    group.add_argument("--min-face-size", type=bounded_float(0.0), default=0.0, metavar="PX",
                       help="ignore faces smaller than this many pixels (default: 0)")
    group.add_argument("--expand", type=bounded_float(1.0, 4.0), default=1.3,
                       help="anonymize the face box scaled by this factor (default: 1.3, 1 to 4)")
    group.add_argument("--feather", type=bounded_float(0.0, 1.0), default=0.1,
                       help="soft edge outside the anonymized region, fraction of face size (default: 0.1)")
    group.add_argument("--mask-shape", choices=("ellipse", "box"), default="ellipse",
                       help="shape of the anonymized region (default: ellipse)")
    group.add_argument("--landmarks", choices=("dlib68", "dlib5", "box"), default="dlib68",
                       help="where landmarks come from when the detector gives none (default: dlib68)")
    group.add_argument("--max-side", type=int, default=None, metavar="PX",
                       help="search images scaled so their longer side is PX (faster; faces that "
                            "become smaller than ~12 px are missed). Default: full resolution, "
                            "large images in overlapping tiles")
    group.add_argument("--no-second-chance", action="store_true",
                       help="when the detector finds no face, report 'no face' at once instead "
                            "of trying another detector, rotations and a 2x pass (faster on "
                            "folders of non-face images)")


def detector_params(args: argparse.Namespace) -> dict:
    params = {"min_face_size": args.min_face_size}
    if args.threshold is not None:
        params["score_threshold"] = args.threshold
    if args.max_side:
        if args.max_side < 32:
            raise InvalidParameterError(f"--max-side must be >= 32 pixels, got {args.max_side}")
        params["max_side"] = args.max_side
    return params


def build_anonymizer(args: argparse.Namespace, no_face: str | None = None,
                     expect_faces: bool = False):
    from ..pipeline import Anonymizer
    return Anonymizer(method=args.method, method_params=parse_params(args.param),
                      detector=args.detector, detector_params=detector_params(args),
                      landmarks=args.landmarks, expand=args.expand, feather=args.feather,
                      mask_shape=args.mask_shape, no_face=no_face, seed=args.seed,
                      expect_faces=expect_faces,
                      second_chance=not args.no_second_chance, allow_weak=args.allow_weak)
