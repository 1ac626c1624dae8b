"""Inference speed measured the same way in every paper benchmark."""
from __future__ import annotations

import time
from typing import Callable


def faces_per_second(run: Callable[[], object], faces: int) -> float:
    """``faces`` over the seconds of one ``run()``, after one warm-up call (rounded to 0.1)."""
    run()
    started = time.perf_counter()
    run()
    return round(faces / (time.perf_counter() - started), 1)
