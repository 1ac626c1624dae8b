"""The one interface every de-identification method implements.

A method is a class with a ``name``, a tuple of documented :class:`Param`, and
:meth:`DeidMethod.apply`, which turns one face crop into its de-identified version::

    @register
    class Mosaic(DeidMethod):
        name = "mosaic"
        summary = "..."
        params = (Param("block_size", int, 8, "side of a colour block in pixels", minimum=1,
                        safe_min=2),)

        def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
            ...

Methods cannot silently do nothing: every number is checked finite (no ``nan``/``inf``/bool),
and a value outside the parameter's measured *safe range* (``Param.safe_min``/``safe_max``), or
a size-relative limit crossed by a face at apply time (:meth:`DeidMethod.flag_weak`), is refused
unless the method is built with ``allow_weak=True``, in which case ``weak_reasons`` says why the
output may still be recognizable. A method weak even at its defaults says so in ``weakness``.

The pipeline (:mod:`facedeid.pipeline`) detects faces, cuts the crop the method asks for
(``space = "box"`` or ``"aligned"``, see :mod:`facedeid.alignment`), calls the method and pastes
the result back. The CLI, the Python API, the evaluator and the video pipeline all build methods
through :func:`facedeid.methods.create_method`, so a registered method is reachable everywhere.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ..alignment import FaceCrop
from ..errors import InvalidParameterError


_ALLOW_WEAK_HINT = ("pass --allow-weak (Python: allow_weak=True) to run it anyway; the method "
                    "then lists the reason in its weak_reasons")


def _refuse_non_number(name: str, expected: str, value: Any) -> None:
    raise InvalidParameterError(f"parameter {name!r} expects {expected} (a finite number, not "
                                f"nan, inf or True/False), got {value!r}")


def _finite_number(name: str, kind: type, value: Any) -> int | float:
    """``value`` as a finite int or float; bools, nan, inf and fractional ints are refused.

    ``True`` is an ``int`` to Python, so ``block_size=True`` would silently mean 1; a ``nan``
    compares false with every bound, so it would slip through every range check.
    """
    if isinstance(value, (bool, np.bool_)):
        _refuse_non_number(name, kind.__name__, value)
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            _refuse_non_number(name, kind.__name__, value)
    elif isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    else:
        _refuse_non_number(name, kind.__name__, value)
    if not np.isfinite(number):
        _refuse_non_number(name, kind.__name__, value)
    if kind is int:
        if isinstance(value, (int, np.integer)):
            return int(value)
        if not number.is_integer():
            _refuse_non_number(name, "integer", value)
        return int(number)
    return float(number)


@dataclass(frozen=True)
class Param:
    """A documented, validated method parameter.

    Attributes:
        minimum, maximum: hard bounds (inclusive); outside them the value is an error.
        safe_min, safe_max: the range (inclusive) in which the method still de-identifies,
            measured (the numbers are in ``help``). A value outside it is refused unless the
            method is built with ``allow_weak=True``, which records the reason instead.
        safe_values: values exempt from the safe range (e.g. ``0`` meaning "derived from the
            face size", which is checked per face at apply time).
    """

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    safe_min: float | None = None
    safe_max: float | None = None
    safe_values: tuple = ()

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` (possibly a CLI string) to this parameter's type and check range.

        Numbers must be finite and not bools; ints must be integral ("8.0" is 8, "8.5" is an
        error). The safe range is not checked here (see :meth:`weak_reason`).
        """
        if self.type in (int, float) and value is not None:
            value = _finite_number(self.name, self.type, value)
        else:
            try:
                if self.type is bool and isinstance(value, str):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError(value)
                    value = value.lower() in ("1", "true", "yes", "on")
                elif self.type is tuple and isinstance(value, str):
                    value = tuple(int(part) for part in value.split(","))
                elif self.type is tuple and value is not None:
                    value = tuple(_finite_number(self.name, int, part) for part in value)
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

    def safe_range(self) -> str:
        """The safe range in words, e.g. ``">= 2"`` or ``"4 .. 24"``; empty when unbounded."""
        if self.safe_min is not None and self.safe_max is not None:
            text = f"{self.safe_min:g} .. {self.safe_max:g}"
        elif self.safe_min is not None:
            text = f">= {self.safe_min:g}"
        elif self.safe_max is not None:
            text = f"<= {self.safe_max:g}"
        else:
            return ""
        if self.safe_values:
            text += ", or " + "/".join(map(str, self.safe_values))
        return text

    def weak_reason(self, value: Any) -> str | None:
        """Why ``value`` (already coerced) lets identity through, or ``None`` when it is safe."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value in self.safe_values:
            return None
        if (self.safe_min is not None and value < self.safe_min) or \
                (self.safe_max is not None and value > self.safe_max):
            return (f"{self.name}={value:g} is outside its safe range ({self.safe_range()}), "
                    "where the method measurably stops hiding the face")
        return None

    def describe(self) -> str:
        bounds = []
        if self.minimum is not None:
            bounds.append(f">= {self.minimum}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum}")
        if self.choices:
            bounds.append("one of " + "/".join(map(str, self.choices)))
        if self.safe_range():
            bounds.append("safe: " + self.safe_range())
        extra = f" ({', '.join(bounds)})" if bounds else ""
        return f"{self.name}={self.default!r}: {self.help}{extra}"


_LOADED_WEIGHTS: dict[tuple[str, str], Any] = {}


def load_weights_once(path: str | Path, loader: Callable[[Path], Any]) -> Any:
    """``loader(path)``, run once per checkpoint file and loader for the whole process.

    Methods are built again and again (every video, every service job, every evaluator
    worker); reading and rebuilding a network each time would dominate small jobs.
    """
    path = Path(path)
    key = (f"{loader.__module__}.{loader.__qualname__}", str(path.resolve()))
    if key not in _LOADED_WEIGHTS:
        _LOADED_WEIGHTS[key] = loader(path)
    return _LOADED_WEIGHTS[key]


#: The classic operator that covers what a method cannot: the image when no face is found
#: (no-face policy "obfuscate"), the rest of the box under an aligned crop, faces a learned
#: method was not trained for. Strong enough that no recognizer the project measures links the
#: result (docs/benchmarks.md), and it never needs landmarks.
FALLBACK_METHOD = ("pixelate", {"size": 8})


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
        notes: what the method reports about this face, e.g. ``{"fallback": "pixelate",
            "reason": ...}`` when it could not use its own model on it; the pipeline copies
            them into the face's sidecar entry (``method_notes``), so they are counted.
    """

    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    track_id: int | None = None
    image_shape: tuple[int, int] | None = None
    notes: dict = field(default_factory=dict)


class DeidMethod(ABC):
    """Base class of every de-identification method.

    Class attributes:
        name: registry key used on the command line (``--method NAME``).
        summary: one line for ``facedeid methods``.
        params: the method's parameters with defaults and ranges.
        space: ``"box"`` (native-resolution window around the face) or ``"aligned"``
            (similarity-aligned square crop of ``aligned_size`` pixels).
        reference: the paper and equations the method implements.
        weakness: one line, non-empty for a method that keeps identity for modern recognizers
            even at its defaults (measured); ``facedeid methods`` prints it.

    Instance attributes:
        config: the validated parameters.
        allow_weak: whether parameters outside their safe range are accepted.
        weak_reasons: why this instance lets identity through, one sentence per parameter
            (empty when every parameter is in its safe range). Filled at construction and, for
            limits that depend on the face size, on the first face that crosses them.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    space: ClassVar[str] = "box"
    aligned_size: ClassVar[int] = 128
    #: whether :meth:`apply` replaces every pixel of the region it is given (false for a method
    #: that changes only part of the face, such as the eye band): the pipeline uses a stronger
    #: method where a whole region must be covered.
    covers_region: ClassVar[bool] = True
    #: aligned-crop methods only: paste the pipeline's fallback (pixelate) over the whole
    #: detected region under the aligned face, so the box corners and jaw that the aligned
    #: ellipse misses are replaced too. A method whose protection is an imperceptible change
    #: of the whole aligned face (the identity cloak) turns it off: pixelating around it would
    #: make it a visible mosaic, which is a different method.
    cover_whole_box: ClassVar[bool] = True
    reference: ClassVar[str] = ""
    weakness: ClassVar[str] = ""
    #: recognizers (registry names, e.g. ``"surrogate"``) this method optimised against as a
    #: loss: ``facedeid evaluate`` marks those attackers "seen in training", not independent.
    #: A method whose checkpoint decides it sets the instance attribute in :meth:`validate`.
    trained_with: tuple[str, ...] = ()

    def __init__(self, *, allow_weak: bool = False, **params: Any) -> None:
        known = {p.name: p for p in self.params}
        unknown = set(params) - set(known)
        if unknown:
            raise InvalidParameterError(
                f"method {self.name!r} has no parameter(s) {sorted(unknown)}; it takes: "
                + (", ".join(known) or "no parameters"))
        if not isinstance(allow_weak, (bool, np.bool_)):
            raise InvalidParameterError(f"allow_weak must be True or False, got {allow_weak!r}")
        self.allow_weak = bool(allow_weak)
        self.weak_reasons: list[str] = []
        self._weak_keys: set[str] = set()
        self.config = {name: spec.coerce(params.get(name, spec.default))
                       for name, spec in known.items()}
        for name, spec in known.items():
            reason = spec.weak_reason(self.config[name])
            if reason:
                self.flag_weak(reason, key=name)
        self.validate()
        by_design = self.known_weakness()
        if by_design:  # accepted without allow_weak: the user chose a weak method, not a typo
            self.weak_reasons.insert(0, by_design)

    def known_weakness(self) -> str:
        """Why this instance keeps identity even with every parameter in range ("" if not).

        Defaults to the class's measured :attr:`weakness`; a method that is weak only for some
        settings (Laplace noise below lam 0.3) overrides this.
        """
        return self.weakness

    def validate(self) -> None:
        """Cross-parameter checks; raise :class:`InvalidParameterError` (or :meth:`flag_weak`)."""

    def flag_weak(self, reason: str, key: str | None = None) -> None:
        """Refuse a choice that lets identity through, or record it when ``allow_weak``.

        Args:
            reason: one sentence saying which value is weak and where the safe range is.
            key: records at most one reason per key (a size-dependent limit would otherwise
                add a sentence for every face size met in a video); default ``reason``.
        Raises:
            InvalidParameterError: unless the method was built with ``allow_weak=True``.
        """
        if not self.allow_weak:
            raise InvalidParameterError(f"{self.name}: {reason}; refused because the output would "
                                        f"still be recognizable — {_ALLOW_WEAK_HINT}")
        self.note_weak(reason, key)

    def note_weak(self, reason: str, key: str | None = None) -> None:
        """Record, without refusing, that a method weak by design (see :attr:`weakness`) is
        also weak for a face it met; at most one reason per ``key``."""
        key = reason if key is None else key
        if key not in self._weak_keys:
            self._weak_keys.add(key)
            self.weak_reasons.append(reason)

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
