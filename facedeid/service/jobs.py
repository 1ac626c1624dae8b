"""``/jobs``: videos and sets of files processed in the background, polled for progress.

A job owns a private folder holding its uploads and results. The folder is deleted when the
job is deleted, when its result expires (``job_ttl_s`` after it finished), or when the service
stops. Job ids are random (128 bits): one client cannot guess another's.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import zipfile
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processing import ProcessingFailed, anonymize_upload
from .uploads import UploadedFile, remove_workspace, scrub_paths
from .workers import MethodRequest, ServiceBusy, WorkerPool

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


@dataclass
class BackgroundJob:
    """One job's state, as ``GET /jobs/{id}`` shows it (:meth:`to_dict`)."""

    id: str
    folder: Path
    uploads: list[UploadedFile]
    request: MethodRequest
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    files_done: int = 0
    video_frames: tuple[int, int | None] | None = None  # (done, total) of the current video
    results: list[dict] = field(default_factory=list)
    result_path: Path | None = None
    error: str | None = None
    cancel_requested: bool = False
    future: Future | None = None

    def progress(self) -> dict[str, Any]:
        """Files done, and frames done of the video being processed."""
        frames_done, frames_total = self.video_frames or (None, None)
        total = len(self.uploads)
        fraction = self.files_done / total if total else 1.0
        if frames_done is not None and frames_total:
            fraction += min(frames_done / frames_total, 1.0) / total
        if self.state == DONE:
            fraction = 1.0
        return {"files_done": self.files_done, "files_total": total,
                "frames_done": frames_done, "frames_total": frames_total,
                "fraction": round(min(fraction, 1.0), 4)}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "progress": self.progress(),
                "created": self.created, "started": self.started, "finished": self.finished,
                "files": [{"file": u.client_name, "kind": u.kind, "bytes": u.size}
                          for u in self.uploads],
                "results": self.results, "error": self.error,
                "result_url": f"/jobs/{self.id}/result" if self.state == DONE else None,
                **self.request.describe()}


class JobStore:
    """Jobs by id; runs them on the worker pool; deletes them at expiry."""

    def __init__(self, pool: WorkerPool, *, max_jobs: int, ttl_s: float, timeout_s: float,
                 max_pixels: int, max_video_frames: int) -> None:
        self.pool = pool
        self.max_jobs, self.ttl_s, self.timeout_s = max_jobs, ttl_s, timeout_s
        self.max_pixels, self.max_video_frames = max_pixels, max_video_frames
        self._jobs: dict[str, BackgroundJob] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._jobs)

    def start(self, folder: Path, uploads: list[UploadedFile], request: MethodRequest
              ) -> BackgroundJob:
        """Register and queue a job; :class:`ServiceBusy` when the store or the queue is full
        (the caller then removes ``folder``)."""
        self.expire()
        job = BackgroundJob(secrets.token_urlsafe(16), folder, uploads, request)
        with self._lock:
            if len(self._jobs) >= self.max_jobs:
                raise ServiceBusy(f"{self.max_jobs} jobs are stored; delete finished ones "
                                  "(DELETE /jobs/{id}) or wait for them to expire")
            self._jobs[job.id] = job
        try:
            job.future = self.pool.submit(self._run, job)
        except ServiceBusy:
            with self._lock:
                self._jobs.pop(job.id, None)
            raise
        job.future.add_done_callback(lambda future, job=job: self._settle(job, future))
        return job

    def get(self, job_id: str) -> BackgroundJob | None:
        return self._jobs.get(job_id)

    def delete(self, job_id: str) -> BackgroundJob | None:
        """Remove a job; a running one stops after its current file and then deletes its files."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        job.cancel_requested = True
        if job.future is not None and not job.future.done() and not job.future.cancel():
            return job  # running: _settle removes the folder when the worker lets go
        if job.state in (QUEUED, RUNNING):
            job.state = CANCELLED
        remove_workspace(job.folder)
        return job

    def expire(self, now: float | None = None) -> int:
        """Delete jobs whose result has expired; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            stale = [job_id for job_id, job in self._jobs.items()
                     if job.finished is not None and now - job.finished > self.ttl_s]
        for job_id in stale:
            self.delete(job_id)
        return len(stale)

    def close(self) -> None:
        for job_id in list(self._jobs):
            self.delete(job_id)

    # -- in the worker -------------------------------------------------------------------------
    def _run(self, job: BackgroundJob) -> None:
        job.state, job.started = RUNNING, time.time()
        deadline = time.monotonic() + self.timeout_s
        outputs: list[tuple[UploadedFile, Path]] = []
        for upload in job.uploads:
            if job.cancel_requested:
                job.state = CANCELLED
                return
            if time.monotonic() > deadline:
                job.error = f"timed out after {self.timeout_s:g} s (--timeout)"
                job.state = FAILED
                return
            def frame_done(done: int, total: int | None, job=job) -> None:
                job.video_frames = (done, total)

            try:
                result = anonymize_upload(self.pool, upload, job.request,
                                          max_pixels=self.max_pixels,
                                          max_video_frames=self.max_video_frames,
                                          on_frame=frame_done)
            except ProcessingFailed as error:
                result_summary = {"file": upload.client_name, "kind": upload.kind,
                                  "status": "failed",
                                  "error": scrub_paths(error, job.uploads, job.folder)}
                job.results.append(result_summary)
            else:
                job.results.append(result.summary)
                if result.path is not None:
                    outputs.append((upload, result.path))
            finally:
                job.video_frames = None
            job.files_done += 1
        if not outputs:
            job.error = "no file could be processed: " + "; ".join(
                f"{r['file']}: {r.get('error', r['status'])}" for r in job.results)
            job.state = FAILED
            return
        job.result_path = outputs[0][1] if len(job.uploads) == 1 else self._bundle(job, outputs)
        for upload in job.uploads:  # only the result is kept until expiry
            upload.path.unlink(missing_ok=True)
        if job.result_path.name == "results.zip":
            for _, result in outputs:
                result.unlink(missing_ok=True)
        job.state = DONE

    def _bundle(self, job: BackgroundJob, outputs: list[tuple[UploadedFile, Path]]) -> Path:
        """One zip of every result plus ``results.json`` (entry names made here, never the
        client's paths)."""
        path = job.folder / "results.zip"
        partial = job.folder / ".results.zip.part"
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            for index, (upload, result) in enumerate(outputs):
                stem = Path(upload.client_name).stem[:60] or "file"
                archive.write(result, f"{index + 1:03d}-{stem}{upload.suffix}")
            archive.writestr("results.json", json.dumps(job.results, indent=2))
        os.replace(partial, path)
        return path

    def _settle(self, job: BackgroundJob, future: Future) -> None:
        """After the worker let go: record an unexpected error; clean up a deleted job."""
        job.finished = time.time()
        if future.cancelled():
            job.state = CANCELLED
        elif future.exception() is not None:
            error = future.exception()
            log.error("job %s failed", job.id, exc_info=error)
            job.state, job.error = FAILED, scrub_paths(f"{type(error).__name__}: {error}",
                                                      job.uploads, job.folder)
        if job.cancel_requested or job.state in (FAILED, CANCELLED):
            remove_workspace(job.folder)  # nothing partial is kept; the record stays for GET

__all__ = ["BackgroundJob", "JobStore", "QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED"]
