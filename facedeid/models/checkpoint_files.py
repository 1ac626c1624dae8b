"""Atomic checkpoint writing and checked reading, shared by every trained model.

A crash mid-write must leave the previous checkpoint intact (temp file + rename), and a missing,
corrupt or foreign file must say which file it is and which command makes a good one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import MissingWeightsError


def save_payload(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """``torch.save(payload)`` to ``path`` through a temp file in the same folder + rename."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_payload(path: str | os.PathLike, expected_format: str, what: str, hint: str,
                 error: type[MissingWeightsError] = MissingWeightsError) -> dict[str, Any]:
    """Load a checkpoint dict whose ``format`` is ``expected_format``.

    Args:
        what: the model's name in messages ("QM-VAE checkpoint").
        hint: how to make a good file (a command), appended to every message.
        error: the exception class raised (a :class:`MissingWeightsError` subclass).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist; {hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as problem:  # torch raises many types for a corrupt file
        raise error(f"{what} {path} is unreadable ({problem}); {hint}") from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise error(f"{path} is not a {what} (format {found!r}, expected "
                    f"{expected_format!r}); {hint}")
    return payload
