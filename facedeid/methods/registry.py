"""Methods registered by name (the pattern of timm's model registry), and the one spec parser.

Methods live in a :class:`facedeid.registry.Registry` like detectors, recognizers and services,
so an unknown name raises the same :class:`~facedeid.errors.UnknownNameError` (here its
subclass :class:`~facedeid.errors.UnknownMethodError`) everywhere.

A method with parameters is written ``"name:k=v,k=v"`` wherever text names one — ``facedeid
evaluate --compare``, QM-VAE's ``--inputs``, a checkpoint's list of input operators — and
``--param k=v`` on the command line; :func:`parse_spec` and :func:`parse_params` are the only
parsers of those forms.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..errors import InvalidParameterError, UnknownMethodError
from ..registry import Registry
from .base import DeidMethod

_REGISTRY: Registry[DeidMethod] = Registry("method", hint="see `facedeid methods`",
                                           error=UnknownMethodError)


def register(cls: type[DeidMethod]) -> type[DeidMethod]:
    """Class decorator: make ``cls`` reachable as ``create_method(cls.name)``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    if cls.space not in ("box", "aligned"):
        raise ValueError(f"{cls.__name__}.space must be 'box' or 'aligned'")
    _REGISTRY.register(cls.name, cls, cls.summary)
    return cls


def method_class(name: str) -> type[DeidMethod]:
    """The class registered as ``name``; :class:`UnknownMethodError` lists the others."""
    return _REGISTRY.factory(name)  # type: ignore[return-value]


def create_method(name: str, *, allow_weak: bool = False, **params: Any) -> DeidMethod:
    """Instantiate the method registered as ``name`` with validated ``params``.

    ``allow_weak=True`` accepts parameters outside the range where the method still
    de-identifies; the instance then lists why in ``weak_reasons``.
    """
    return method_class(name)(allow_weak=allow_weak, **params)


def available_methods() -> dict[str, type[DeidMethod]]:
    return {name: _REGISTRY.factory(name) for name in _REGISTRY.names()}  # type: ignore[misc]


def parse_params(pairs: Iterable[str] | None, *, context: str = "--param") -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}`` (values stay text; each :class:`Param` converts its own).

    ``context`` names where the pairs came from in the error message.
    """
    params: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidParameterError(f"{context} expects key=value, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"blur:kernel_size=31,sigma=2"`` -> ``("blur", {"kernel_size": "31", "sigma": "2"})``.

    ``"name"`` alone has no parameters. The name is not looked up here (a spec may be parsed
    before its method's module is imported); :func:`create_method` does that.
    """
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise InvalidParameterError(f"no method name in spec {spec!r} "
                                    "(expected name:key=value,...)")
    pairs = [part.strip() for part in rest.split(",") if part.strip()]
    return name, parse_params(pairs, context=f"spec {spec!r}: a parameter")


def format_spec(name: str, params: dict[str, Any] | Iterable[tuple[str, Any]] = ()) -> str:
    """The inverse of :func:`parse_spec`: ``("blur", {"sigma": 2})`` -> ``"blur:sigma=2"``."""
    items = list(params.items() if isinstance(params, dict) else params)
    if not items:
        return name
    return f"{name}:" + ",".join(f"{key}={value}" for key, value in items)
