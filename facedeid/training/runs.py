"""Small pieces every trainer script shares: the recorded command, the closing report, main()."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable


def recorded_command(trainer: str) -> str:
    """``facedeid train TRAINER ...`` as this process was invoked (through the CLI or as
    ``python -m facedeid.training.X``), stored in the checkpoint so it can be reproduced."""
    words = sys.argv[1:]
    words = words[2:] if words[:2] == ["train", trainer] else words
    return f"facedeid train {trainer} " + " ".join(words)


def add_state_and_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The resumable work state and the data options every CelebA trainer shares."""
    parser.add_argument("--work", type=Path, default=None,
                        help="full training state for --resume (default: OUT with .work.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from --work")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding celeba-first10k/ and celeba-id200/ (default ../shared/data)")
    parser.add_argument("--cache", type=Path, default=Path("runs/gen_crops"),
                        help="aligned-crop (and descriptor) cache, shared with the face generator")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N training (and held-out) images: quick trials "
                             "and tests")


def add_generator_run_arguments(parser: argparse.ArgumentParser, generator_help: str) -> None:
    """The options every trainer built on the face generator shares: the generator it starts
    from, the output, and :func:`add_state_and_data_arguments`."""
    parser.add_argument("--generator", type=Path, required=True, help=generator_help)
    parser.add_argument("--out", type=Path, required=True, help="fp16 checkpoint to write")
    add_state_and_data_arguments(parser)


def report_written(metrics: dict, path: Path) -> None:
    print(json.dumps(metrics), flush=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)


def script_main(description: str, add_arguments: Callable, train: Callable,
                argv: list[str] | None = None) -> int:
    """``python -m facedeid.training.X``: the same options as ``facedeid train X``."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    train(parser.parse_args(argv))
    return 0
