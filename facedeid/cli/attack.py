"""``facedeid attack restore``: the adaptive restoration attack on one method (issue 13)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io.images import write_bytes_atomic
from ..methods.registry import parse_params

HELP = "attack a de-identification method the way an adaptive attacker would"
RESTORE_DESCRIPTION = """\
Train a restoration network (U-Net, L1 + mini-Xception expression features) that undoes METHOD
with its parameters, on (de-identified, original) pairs of the 160 TRAIN identities of
celeba-id200/identity_split_disjoint.txt (4,800 images; the attacker de-identifies them itself
with a fresh seed), then restore the de-identified 1,200 TEST images (40 people never trained on)
and re-identify them against the original test images. Prints rank-1 and SDR before and after
restoration for each recognizer and writes them as JSON.

The trained attacker is cached per method, validated parameters and crop size (--cache); a
second run reuses it, and a larger --epochs resumes it. The evaluator loads the same attacker
(facedeid.evaluation.restoration_attack.load_restorer).

examples:
  facedeid attack restore --method mosaic --epochs 3
  facedeid attack restore --method blur --param kernel_size=31 --epochs 2 --limit 600
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("attack", help=HELP, description=HELP)
    attacks = parser.add_subparsers(dest="attack", metavar="ATTACK")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
    restore = attacks.add_parser("restore", help="adaptive restoration attack (train a U-Net to "
                                 "undo the method, re-identify the restored faces)",
                                 description=RESTORE_DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    restore.add_argument("-m", "--method", required=True, help="method to attack")
    restore.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                         help="method parameter, repeatable (default: the method's defaults)")
    restore.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    restore.add_argument("--limit", type=int, default=None, metavar="N",
                         help="first N train and first N/4 test images "
                              "(default: all 4,800 / 1,200)")
    restore.add_argument("--test-limit", type=int, default=None, metavar="N",
                         help="first N test images (overrides the share --limit implies)")
    restore.add_argument("--size", type=int, choices=(64, 96), default=64,
                         help="aligned crop side the attacker works at (default: 64, CPU budget)")
    restore.add_argument("--perceptual-weight", type=float, default=0.1,
                         help="weight of the expression-feature term (default: 0.1; 0 = L1 only)")
    restore.add_argument("--recognizer", action="append", default=None, metavar="NAME",
                         help="attacker recognizer, repeatable (default: dlib and faceres)")
    restore.add_argument("--seed", type=int, default=0,
                         help="publisher's seed for the test outputs and the training seed")
    restore.add_argument("--cache", default=None, metavar="DIR",
                         help="attacker, pair and face cache "
                              "(default: ~/.cache/facedeid/restoration)")
    restore.add_argument("--data-root", default=None, help="folder holding celeba-id200")
    restore.add_argument("-o", "--out", default=None, metavar="FILE",
                         help="JSON report (default: attack_restore_METHOD.json)")
    restore.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    restore.set_defaults(handler=run_restore)


def run_restore(args: argparse.Namespace) -> int:
    from ..errors import InvalidParameterError
    from ..io.datasets import default_data_root
    from ..training.restoration import TrainConfig, format_report, run_restoration_attack

    if args.epochs < 1:
        raise InvalidParameterError(f"--epochs must be >= 1, got {args.epochs}")
    for option, value in (("--limit", args.limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 1:
            raise InvalidParameterError(f"{option} must be >= 1, got {value}")
    params = parse_params(args.param)
    root = Path(args.data_root) if args.data_root else default_data_root()
    test_limit = args.test_limit
    if test_limit is None and args.limit is not None:
        test_limit = max(args.limit // 4, 1)
    report = run_restoration_attack(
        args.method, params, data_root=root / "celeba-id200", cache_dir=args.cache,
        size=args.size, limit=args.limit, test_limit=test_limit,
        config=TrainConfig(epochs=args.epochs, perceptual_weight=args.perceptual_weight,
                           seed=args.seed),
        recognizers=args.recognizer or ("dlib", "faceres"), seed=args.seed,
        progress=not args.quiet)
    print(format_report(report))
    out = Path(args.out or f"attack_restore_{args.method}.json")
    write_bytes_atomic(out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"report: {out}")
    return 0
