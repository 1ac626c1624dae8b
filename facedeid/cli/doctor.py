"""``facedeid doctor``: check that every model weight is installed and intact."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check installed model weights",
                                   description="Verify the SHA-256 of every weight file facedeid "
                                               "uses and say how to install what is missing.")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..assets import check_all

    report = check_all()
    for name, status in report.items():
        print(f"{name:20s} {status}")
    missing = [name for name, status in report.items() if not status.startswith("ok")]
    if missing:
        print(f"\n{len(missing)} weight file(s) missing or corrupt; see the install hints above.")
        return 1
    print("\nall weights present and verified")
    return 0
