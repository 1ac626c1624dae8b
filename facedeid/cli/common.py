"""Options shared by several sub-commands (method choice and parameters, detector knobs)."""
from __future__ import annotations

import argparse

from ..detection import DETECTORS
from ..errors import InvalidParameterError


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` → ``{"k": "v"}``; values are converted by each method's :class:`Param`."""
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidParameterError(f"--param expects key=value, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method")
    group.add_argument("-m", "--method", default="mosaic",
                       help="de-identification method (default: mosaic; see `facedeid methods`)")
    group.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                       help="method parameter, repeatable (e.g. --param block_size=12)")
    group.add_argument("--seed", type=int, default=None,
                       help="seed for stochastic methods (default: fresh randomness)")


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detection")
    group.add_argument("--detector", default="centerface", choices=list(DETECTORS),
                       help="face detector (default: centerface)")
    group.add_argument("--threshold", type=float, default=None,
                       help="detector score threshold (default: the detector's own; centerface 0.5)")
    group.add_argument("--min-face-size", type=float, default=0.0, metavar="PX",
                       help="ignore faces smaller than this many pixels (default: 0)")
    group.add_argument("--expand", type=float, default=1.3,
                       help="anonymize the face box scaled by this factor (default: 1.3, >= 1)")
    group.add_argument("--feather", type=float, default=0.1,
                       help="soft edge outside the anonymized region, fraction of face size (default: 0.1)")
    group.add_argument("--mask-shape", choices=("ellipse", "box"), default="ellipse",
                       help="shape of the anonymized region (default: ellipse)")
    group.add_argument("--landmarks", choices=("dlib68", "dlib5", "box"), default="dlib68",
                       help="where landmarks come from when the detector gives none (default: dlib68)")


def detector_params(args: argparse.Namespace) -> dict:
    params = {"min_face_size": args.min_face_size}
    if args.threshold is not None:
        params["score_threshold"] = args.threshold
    return params


def build_anonymizer(args: argparse.Namespace, no_face: str = "keep"):
    from ..pipeline import Anonymizer
    return Anonymizer(method=args.method, method_params=parse_params(args.param),
                      detector=args.detector, detector_params=detector_params(args),
                      landmarks=args.landmarks, expand=args.expand, feather=args.feather,
                      mask_shape=args.mask_shape, no_face=no_face, seed=args.seed)
