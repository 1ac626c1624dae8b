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
