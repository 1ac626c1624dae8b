"""Methods registered by name (the pattern of timm's model registry)."""
from __future__ import annotations

from typing import Any

from ..errors import UnknownMethodError
from .base import DeidMethod

_REGISTRY: dict[str, type[DeidMethod]] = {}


def register(cls: type[DeidMethod]) -> type[DeidMethod]:
    """Class decorator: make ``cls`` reachable as ``create_method(cls.name)``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by "
                         f"{_REGISTRY[cls.name].__module__}")
    if cls.space not in ("box", "aligned"):
        raise ValueError(f"{cls.__name__}.space must be 'box' or 'aligned'")
    _REGISTRY[cls.name] = cls
    return cls


def method_class(name: str) -> type[DeidMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"no method named {name!r}. Available: {', '.join(sorted(_REGISTRY))} "
            "(see `facedeid methods`)") from None


def create_method(name: str, **params: Any) -> DeidMethod:
    """Instantiate the method registered as ``name`` with validated ``params``."""
    return method_class(name)(**params)


def available_methods() -> dict[str, type[DeidMethod]]:
    return dict(sorted(_REGISTRY.items()))
