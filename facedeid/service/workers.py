"""Compute workers: CPU-bound pipeline calls run off the event loop, with a bounded queue.

The pool is the standard library's :class:`~concurrent.futures.ThreadPoolExecutor`; what this
module adds is admission (at most ``workers + queue_size`` items accepted at once, the rest
answered 503 at the door instead of piling up in memory) and per-worker models: each worker
thread keeps one :class:`~facedeid.detection.locate.FaceLocator` (detector and landmark
models, loaded on the thread's first item) and a small cache of
:class:`~facedeid.pipeline.Anonymizer` objects keyed by method and parameters, so a model is
loaded once per worker and reused by every request after. Nothing is shared between threads,
so no model is ever called from two threads at once.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from ..pipeline import Anonymizer

#: Anonymizers one worker keeps (least recently used dropped first): bounds memory when
#: clients try many parameter combinations.
ANONYMIZERS_PER_WORKER = 8


@dataclass(frozen=True)
class MethodRequest:
    """What a client asked for: a method, its parameters and the pipeline options exposed.

    Hashable: it is the key of a worker's Anonymizer cache.
    """

    method: str = "mosaic"
    params: tuple[tuple[str, Any], ...] = ()
    seed: int | None = None
    allow_weak: bool = False
    no_face: str = "keep"

    def build(self, locator) -> Anonymizer:
        """The Anonymizer, sharing the worker's face locator (its models load once)."""
        return Anonymizer(method=self.method, method_params=dict(self.params), detector=locator,
                          no_face=self.no_face, seed=self.seed, allow_weak=self.allow_weak)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params), "seed": self.seed,
                "allow_weak": self.allow_weak, "no_face": self.no_face}


class ServiceBusy(Exception):
    """Every worker is busy and the queue is full (HTTP 503)."""


class WorkerPool:
    """``workers`` threads, at most ``capacity`` items accepted at once.

    Args:
        workers: compute threads.
        capacity: items running plus waiting; :meth:`submit` raises :class:`ServiceBusy` beyond.
    """

    def __init__(self, workers: int, capacity: int) -> None:
        self.workers, self.capacity = workers, capacity
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix="facedeid-worker")
        self._lock = threading.Lock()
        self._accepted = 0
        self._local = threading.local()

    @property
    def accepted(self) -> int:
        """Items running or waiting now."""
        return self._accepted

    def refuse_if_full(self) -> None:
        """:class:`ServiceBusy` now, before a request's upload is read, when no slot is free
        (:meth:`submit` checks again: a slot may be taken meanwhile)."""
        if self._accepted >= self.capacity:
            raise ServiceBusy(f"all {self.workers} worker(s) busy and the queue of "
                              f"{self.capacity - self.workers} is full; retry later")

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """Queue ``function(*args)`` on a worker; :class:`ServiceBusy` when full."""
        with self._lock:
            self.refuse_if_full()
            self._accepted += 1
        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)  # runs once: done, failed or cancelled
        return future

    def _release(self, _future: Future | None) -> None:
        with self._lock:
            self._accepted -= 1

    # -- per-worker models (call these from inside a worker thread) --------------------------
    def locator(self):
        """This worker's face locator, built on first use."""
        locator = getattr(self._local, "locator", None)
        if locator is None:
            from ..detection.locate import FaceLocator
            locator = self._local.locator = FaceLocator("centerface", {}, landmarks="dlib68")
        return locator

    def anonymizer(self, request: MethodRequest) -> Anonymizer:
        """This worker's Anonymizer for ``request``, built once and reused."""
        cache: OrderedDict = getattr(self._local, "anonymizers", None)
        if cache is None:
            cache = self._local.anonymizers = OrderedDict()
        if request in cache:
            cache.move_to_end(request)
            return cache[request]
        anonymizer = request.build(self.locator())
        cache[request] = anonymizer
        if len(cache) > ANONYMIZERS_PER_WORKER:
            cache.popitem(last=False)
        return anonymizer

    def recognizers(self, names: tuple[str, ...]) -> list:
        """This worker's face recognizers for ``/evaluate``, loaded once."""
        from ..evaluation.recognizers import create_recognizer

        loaded: dict = getattr(self._local, "recognizers", None)
        if loaded is None:
            loaded = self._local.recognizers = {}
        for name in names:
            if name not in loaded:
                loaded[name] = create_recognizer(name)
        return [loaded[name] for name in names]

    def shutdown(self) -> None:
        """Cancel waiting items and stop accepting; running ones finish in their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["WorkerPool", "MethodRequest", "ServiceBusy", "ANONYMIZERS_PER_WORKER"]
