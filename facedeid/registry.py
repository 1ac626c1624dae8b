"""One registry pattern for everything reached by name: methods, detectors, recognizers, services.

Each kind of thing keeps one :class:`Registry`. It maps a name to a factory (a class or a
function building the object) and a one-line description, so the CLI, the evaluator and
``facedeid methods`` list and build every kind the same way, and an unknown name fails the same
way everywhere: :class:`~facedeid.errors.UnknownNameError` naming the available choices::

    DETECTORS = Registry("detector")
    DETECTORS.register("haar", build_haar, "OpenCV Haar cascade")
    detector = DETECTORS.create("haar", min_face_size=20)

A registry reads like a read-only mapping of name -> :class:`Entry` (``list(DETECTORS)`` gives
the names, ``"haar" in DETECTORS`` works), so code that iterated the old plain dictionaries
keeps working.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """What a name stands for: ``factory(**kwargs)`` builds it; ``description`` says what it is."""

    factory: Callable[..., T]
    description: str = ""


class Registry(Mapping[str, Entry[T]]):
    """Names of one kind of thing (``kind``: "method", "detector", ...) and how to build each.

    Args:
        kind: what the names stand for, used in error messages ("unknown detector 'x'").
        hint: appended to the unknown-name message (e.g. where to see the full list).
        error: the :class:`UnknownNameError` subclass raised for an unknown name.
    """

    def __init__(self, kind: str, hint: str = "",
                 error: type[UnknownNameError] = UnknownNameError) -> None:
        self.kind = kind
        self.hint = hint
        self.error = error
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, factory: Callable[..., T], description: str = "", *,
                 replace: bool = False) -> Callable[..., T]:
        """Make ``create(name, **kwargs)`` call ``factory(**kwargs)``; returns ``factory``.

        A name already taken by another factory is refused unless ``replace`` (two modules
        silently claiming one name would make which one wins depend on import order).
        """
        if not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        current = self._entries.get(name)
        if current is not None and current.factory is not factory and not replace:
            raise ValueError(f"{self.kind} name {name!r} is already registered by "
                             f"{getattr(current.factory, '__module__', current.factory)!r}")
        self._entries[name] = Entry(factory, description)
        return factory

    def unregister(self, name: str) -> Entry[T] | None:
        """Remove ``name`` (tests register throw-away entries); returns what was there."""
        return self._entries.pop(name, None)

    def pop(self, name: str, default: Any = None) -> Entry[T] | Any:
        """Mapping-style removal; same as :meth:`unregister` with a default."""
        return self._entries.pop(name, default)

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``; raise :attr:`error` listing the available names if none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name"
            choices = ", ".join(self.names()) or "(none registered)"
            hint = f" ({self.hint})" if self.hint else ""
            raise self.error(f"unknown {self.kind} {name!r}. Available: {choices}{hint}") \
                from None

    def factory(self, name: str) -> Callable[..., T]:
        return self.entry(name).factory

    def create(self, name: str, /, **kwargs: Any) -> T:
        """Build the thing registered as ``name``; keyword arguments go to its factory."""
        return self.entry(name).factory(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """``{name: description}``, sorted by name (what ``--help`` and listings print)."""
        return {name: self._entries[name].description for name in self.names()}

    # -- read-only mapping (name -> Entry) -----------------------------------------------------
    def __getitem__(self, name: str) -> Entry[T]:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


__all__ = ["Entry", "Registry", "UnknownNameError"]
