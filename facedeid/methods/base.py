"""The one interface every de-identification method implements.

A method is a class with a ``name``, a tuple of documented :class:`Param`, and
:meth:`DeidMethod.apply`, which turns one face crop into its de-identified version::

    @register
    class Mosaic(DeidMethod):
        name = "mosaic"
        summary = "..."
        params = (Param("block_size", int, 8, "side of a colour block in pixels", minimum=1),)

        def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
            ...

The pipeline (:mod:`facedeid.pipeline`) detects faces, cuts the crop the method asks for
(``space = "box"`` or ``"aligned"``, see :mod:`facedeid.alignment`), calls the method and pastes
the result back. The CLI, the Python API, the evaluator and the video pipeline all build methods
through :func:`facedeid.methods.create_method`, so a registered method is reachable everywhere.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..alignment import FaceCrop
from ..errors import InvalidParameterError


@dataclass(frozen=True)
class Param:
    """A documented, validated method parameter."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` (possibly a CLI string) to this parameter's type and check range."""
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                value = value.lower() in ("1", "true", "yes", "on")
            elif self.type is tuple and isinstance(value, str):
                value = tuple(int(part) for part in value.split(","))
            elif value is not None:
                value = self.type(value)
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"parameter {self.name!r} expects {self.type.__name__}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise InvalidParameterError(
                f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                raise InvalidParameterError(f"parameter {self.name!r} must be >= {self.minimum}, got {value}")
            if self.maximum is not None and value > self.maximum:
                raise InvalidParameterError(f"parameter {self.name!r} must be <= {self.maximum}, got {value}")
        return value

    def describe(self) -> str:
        bounds = []
        if self.minimum is not None:
            bounds.append(f">= {self.minimum}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum}")
        if self.choices:
            bounds.append("one of " + "/".join(map(str, self.choices)))
        extra = f" ({', '.join(bounds)})" if bounds else ""
        return f"{self.name}={self.default!r}: {self.help}{extra}"


def require_positive(params: dict, name: str, meaning: str) -> None:
    """Refuse a strictly positive parameter (a privacy budget, say) with a sentence naming it.

    ``Param.minimum`` is inclusive and its message generic; a budget of 0 deserves better.
    """
    if name not in params:
        return
    try:
        value = float(params[name])
    except (TypeError, ValueError):
        return  # Param.coerce reports the type error
    if not np.isfinite(value) or value <= 0:
        raise InvalidParameterError(f"{name} ({meaning}) must be > 0, got {params[name]!r}")


@dataclass
class FaceContext:
    """What a method may know about the face besides its pixels.

    Attributes:
        rng: random generator for stochastic methods; seeded per face (and per video track)
            so results are reproducible and a track keeps one replacement identity.
        track_id: stable id of the face across video frames, ``None`` for a still image.
        image_shape: ``(H, W)`` of the full image the crop comes from.
    """

    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    track_id: int | None = None
    image_shape: tuple[int, int] | None = None


class DeidMethod(ABC):
    """Base class of every de-identification method.

    Class attributes:
        name: registry key used on the command line (``--method NAME``).
        summary: one line for ``facedeid methods``.
        params: the method's parameters with defaults and ranges.
        space: ``"box"`` (native-resolution window around the face) or ``"aligned"``
            (similarity-aligned square crop of ``aligned_size`` pixels).
        reference: the paper and equations the method implements.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    space: ClassVar[str] = "box"
    aligned_size: ClassVar[int] = 128
    reference: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        known = {p.name: p for p in self.params}
        unknown = set(params) - set(known)
        if unknown:
            raise InvalidParameterError(
                f"method {self.name!r} has no parameter(s) {sorted(unknown)}; it takes: "
                + (", ".join(known) or "no parameters"))
        self.config = {name: spec.coerce(params.get(name, spec.default))
                       for name, spec in known.items()}
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks; raise :class:`InvalidParameterError`."""

    @abstractmethod
    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        """Return the de-identified ``crop.pixels`` (same shape, ``uint8`` RGB).

        Only pixels where ``crop.mask > 0`` reach the output image; the method may change
        others freely (they are discarded) but must not change the array's shape.
        """

    def apply_batch(self, crops: list[FaceCrop], contexts: list[FaceContext]) -> list[np.ndarray]:
        """Several faces at once; learned methods override this to batch their network."""
        return [self.apply(crop, context) for crop, context in zip(crops, contexts)]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"
