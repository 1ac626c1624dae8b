"""What one running service allows: sizes, concurrency, time limits, who may call it.

Every limit has a safe default, so ``create_app()`` with no arguments is a loopback service
that cannot be made to hold unbounded memory, disk or CPU by one client.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..io.images import DEFAULT_MAX_PIXELS

#: Hosts a service may bind to without a token: only this machine can reach them.
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and switches of one service instance (``facedeid serve`` fills them from flags).

    Attributes:
        workers: compute threads; each loads its own models once and reuses them.
        queue_size: requests and jobs that may wait for a worker; beyond ``workers +
            queue_size`` accepted at once, new ones get 503 with ``Retry-After``.
        max_upload_bytes: size cap of one request body; larger uploads get 413 while
            streaming (nothing beyond the cap is written to disk).
        timeout_s: a synchronous ``/anonymize`` or ``/evaluate`` that has not finished after
            this many seconds answers 504 (the worker finishes its item, then frees its slot;
            its files are deleted).
        job_timeout_s: the same for ``/jobs`` (videos, folders).
        job_ttl_s: a finished job's result is kept this long, then deleted.
        max_jobs: jobs kept at once (queued, running or finished); beyond it, 503.
        max_files: files in one ``/jobs`` or ``/evaluate`` request.
        max_pixels: the CLI's decompression-bomb limit (pixels of an image, all pages together;
            pixels of one video frame).
        max_video_frames: longest video accepted (frames, from its header), so that one upload
            cannot hold a worker for hours.
        token: when set, every API call needs ``Authorization: Bearer <token>``.
        cors_origins: origins allowed to call the API from a browser page of their own
            (default none: CORS closed).
        temp_root: where uploads and results live while in use (default: the system temp dir).
        evaluate_recognizers: attackers of ``/evaluate`` (small and bounded: one fast model).
        evaluate_services: utility services of ``/evaluate``.
    """

    workers: int = 1
    queue_size: int = 8
    max_upload_bytes: int = 200 * 1024 * 1024
    timeout_s: float = 120.0
    job_timeout_s: float = 3600.0
    job_ttl_s: float = 3600.0
    max_jobs: int = 64
    max_files: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_video_frames: int = 18_000  # 10 minutes at 30 fps
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    temp_root: Path | None = None
    evaluate_recognizers: tuple[str, ...] = ("dlib",)
    evaluate_services: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("workers", "max_upload_bytes", "max_jobs", "max_files", "max_pixels",
                     "max_video_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")
        for name in ("timeout_s", "job_timeout_s", "job_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("a token must have at least 8 characters")

    @property
    def capacity(self) -> int:
        """Work items accepted at once: running plus waiting."""
        return self.workers + self.queue_size


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


__all__ = ["ServiceSettings", "LOOPBACK_HOSTS", "is_loopback"]
