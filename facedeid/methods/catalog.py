"""The method registry as JSON, from the same :class:`Param` declarations that ``--param``
validates: ``facedeid methods --json`` and the service's ``GET /methods`` both print this, so
the web page's form can never offer a parameter the pipeline would not accept."""
from __future__ import annotations

import math
from typing import Any

from .base import DeidMethod, Param

#: JSON-schema-like names for the Python types parameters declare.
_TYPE_NAMES = {int: "integer", float: "number", bool: "boolean", str: "string", tuple: "array"}


def _plain(value: Any) -> Any:
    """A JSON-safe form of a default or bound (tuples become lists, inf becomes None)."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def describe_param(param: Param) -> dict[str, Any]:
    """One parameter: type, default, hard range, the range where it still de-identifies, help."""
    return {"name": param.name, "type": _TYPE_NAMES.get(param.type, param.type.__name__),
            "default": _plain(param.default), "help": param.help,
            "minimum": _plain(param.minimum), "maximum": _plain(param.maximum),
            "choices": [_plain(c) for c in param.choices] if param.choices else None,
            "safe_minimum": _plain(param.safe_min), "safe_maximum": _plain(param.safe_max),
            "safe_values": [_plain(v) for v in param.safe_values],
            "safe_range": param.safe_range()}


def describe_method(cls: type[DeidMethod]) -> dict[str, Any]:
    return {"name": cls.name, "summary": cls.summary, "space": cls.space,
            "reference": cls.reference, "weakness": cls.weakness or None,
            "params": [describe_param(param) for param in cls.params]}


def method_catalog() -> list[dict[str, Any]]:
    """Every registered method, sorted by name."""
    from . import available_methods
    return [describe_method(cls) for _, cls in sorted(available_methods().items())]


__all__ = ["method_catalog", "describe_method", "describe_param"]
