"""``facedeid methods``: list de-identification methods with their parameters."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("methods", help="list methods and their parameters",
                                   description="List every registered de-identification method, "
                                               "its parameters, defaults and ranges. 'WEAK:' marks "
                                               "a method measured to keep identity even at its "
                                               "defaults; 'safe:' gives the range "
                                               "outside which a parameter is refused unless "
                                               "--allow-weak.")
    parser.add_argument("name", nargs="?", help="show only this method")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..methods import available_methods, method_class

    classes = {args.name: method_class(args.name)} if args.name else available_methods()
    if args.json:
        from ..methods.catalog import describe_method
        print(json.dumps({name: describe_method(cls) for name, cls in classes.items()}, indent=2))
        return 0
    for name, cls in classes.items():
        print(f"{name:16s} {cls.summary}")
        if cls.weakness:
            print(f"{'':16s}   WEAK: {cls.weakness}")
        if cls.reference:
            print(f"{'':16s}   ref: {cls.reference}")
        for param in cls.params:
            print(f"{'':16s}   --param {param.describe()}")
    return 0
