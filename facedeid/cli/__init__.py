"""``facedeid`` command line. Each sub-command lives in its own module with a ``register``
function that adds its parser; :func:`main` wires them together."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ..errors import FaceDeidError
from . import anonymize, attack, demo, doctor, evaluate, methods, restore, serve, train, verify

# Order is the order `facedeid --help` lists them in.
COMMANDS = [anonymize, restore, verify, methods, demo, doctor, evaluate, attack, train, serve]

DESCRIPTION = """\
Remove identity from faces in images and video, and measure what survives.

The pipeline is detect -> align -> de-identify -> paste back. Every method is reached by
name (`facedeid methods` lists them with their parameters). Nothing is downloaded: the
detector and recognizer weights come from installed packages (`facedeid doctor` checks them).

examples:
  facedeid anonymize photo.jpg -o out/                 mosaic every face (default method)
  facedeid anonymize album/ -o album_anon/ --method blur --param kernel_size=51
  facedeid methods                                     list methods and parameters
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facedeid", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that every ``except BaseException`` cleanup
    runs (temporary image, video and boxes files are removed). A ``BaseException`` like
    ``KeyboardInterrupt``: the per-file ``except Exception`` of a batch does not swallow it."""


def _raise_terminated(signum, frame) -> None:
    # A second SIGTERM must not interrupt the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    # Handlers can only be installed from the main thread (a service may call main elsewhere).
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(argv)
    except Terminated:
        print("facedeid: terminated (SIGTERM); no partial output left behind", file=sys.stderr)
        return 143
    finally:
        if previous is not None:  # None: a handler not installed from Python; leave it
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except FaceDeidError as error:
        print(f"facedeid: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facedeid: interrupted", file=sys.stderr)
        return 130


