"""What a worker does with an upload: the CLI's own per-file functions, nothing re-assembled.

Images go through :func:`facedeid.batch.anonymize_image_file` (every page, EXIF and GPS
dropped, atomic write, the CLI's pixel budget), videos through
:func:`facedeid.video.anonymize_video_job` (tracking, audio copied, atomic write), and
``/evaluate`` through :class:`facedeid.evaluation.runner.Evaluator`. These run inside a
worker thread (see :mod:`facedeid.service.workers`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..batch import Job, anonymize_image_file
from .uploads import UploadedFile
from .workers import MethodRequest, WorkerPool

#: Face boxes listed in a result (the count is always exact): keeps the header small.
MAX_LISTED_FACES = 50


def return_freed_memory() -> None:
    """Free a finished video's memory now and give it back to the operating system.

    A video leaves tens of MB of frames reachable only through reference cycles, which
    Python's cyclic collector reaches late (generation 2 runs rarely), and glibc keeps freed
    pages in its heaps. The measured RSS of ``facedeid serve`` grew ~50 MB per video without
    this, and stays flat with it (docs/service.md). ``malloc_trim`` is skipped where the C
    library has none.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


class ProcessingFailed(Exception):
    """The pipeline refused or failed on an upload (its message is safe to show)."""


@dataclass
class FileResult:
    """One processed upload: where the result is and what happened (``summary``)."""

    path: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


def result_path(upload: UploadedFile) -> Path:
    return upload.path.with_name(f"result-{upload.path.stem}{upload.suffix}")


def anonymize_upload(pool: WorkerPool, upload: UploadedFile, request: MethodRequest, *,
                     max_pixels: int, max_video_frames: int,
                     on_frame: Callable[[int, int | None], None] | None = None) -> FileResult:
    """De-identify one identified upload (see :func:`~facedeid.service.uploads.identify`).

    Raises:
        ProcessingFailed: the file could not be processed (corrupt data, method error).
    """
    started = time.perf_counter()
    anonymizer = pool.anonymizer(request)
    job = Job(upload.path, result_path(upload), upload.kind)
    protected = {Path(os.path.realpath(upload.path))}
    faces: list[dict] = []
    if upload.kind == "image":
        outcome = anonymize_image_file(job, anonymizer, protected=protected, write_json=True,
                                       max_pixels=max_pixels)
        sidecar = job.target.with_name(job.target.name + ".json")
        if outcome.status != "failed" and sidecar.is_file():
            faces = json.loads(sidecar.read_text())["faces"]
            sidecar.unlink()
    else:
        from ..video import VideoOptions, anonymize_video_job

        options = VideoOptions(progress=False, max_frames=max_video_frames, on_frame=on_frame)
        try:
            outcome = anonymize_video_job(job, anonymizer, options, protected=protected)
        except Exception as error:  # e.g. cv2.error from a method: this file fails, as in the CLI
            raise ProcessingFailed(f"{type(error).__name__}: {error}") from None
        finally:
            return_freed_memory()
    if outcome.status == "failed":
        raise ProcessingFailed(outcome.error or "processing failed")
    summary = {"file": upload.client_name, "kind": upload.kind, "format": upload.format,
               "status": outcome.status,
               "faces": outcome.faces if upload.kind == "video" else len(faces),
               "face_boxes": [{key: face[key] for key in ("box", "score", "page") if key in face}
                              for face in faces[:MAX_LISTED_FACES]],
               "warnings": outcome.warnings, "seconds": round(time.perf_counter() - started, 3),
               **request.describe()}
    if upload.kind == "video":
        summary["face_tracks"] = summary.pop("faces")
    return FileResult(Path(outcome.target) if outcome.target else None, summary)


def evaluate_uploads(pool: WorkerPool, folder: Path, request: MethodRequest,
                     recognizers: tuple[str, ...], services: tuple[str, ...]) -> dict[str, Any]:
    """Privacy and utility of one method on the uploaded images (a small set): the evaluator
    of ``facedeid evaluate``, with this worker's recognizers and no on-disk cache."""
    from ..evaluation.runner import EvalConfig, Evaluator, MethodSpec

    config = EvalConfig(dataset=str(folder), split="all", recognizers=pool.recognizers(recognizers),
                        services=services, cache_dir=None, seed=request.seed or 0, samples=0,
                        progress=False, gallery_per_identity=None)
    spec = MethodSpec(request.method, tuple((k, str(v)) for k, v in request.params))
    results = Evaluator(config).run([spec])
    row = results["methods"][0]
    summary = {
        "method": row["method"], "params": row["params"],
        "images": results["dataset"]["records"], "faces": row["faces"],
        "excluded_no_face": results["dataset"]["excluded_no_face"],
        "unreadable": len(results["dataset"]["unreadable"]), "failures": row["failures"],
        "privacy": {name: {key: figures.get(key) for key in
                           ("sdr", "identity_distance_mean", "rank1_own_gallery", "tau", "metric",
                            "attacker", "parrot")}
                    for name, figures in row["privacy"].items()},
        "baseline_rank1": {name: figures.get("rank1_own_gallery")
                           for name, figures in results["baseline"]["privacy"].items()},
        "utility": row["services"], "quality": row["quality"], "seconds": row["seconds"],
        "notes": "rank-1 uses the uploaded originals as the gallery (a set of one photo per "
                 "person makes it an upper bound on re-identification by matching); sdr is the "
                 "share of faces whose identity distance passes the recognizer's threshold"}
    return plain_json(summary)


def plain_json(value: Any) -> Any:
    """``value`` with numpy scalars made Python numbers and nan/inf made ``None`` (valid JSON)."""
    if isinstance(value, dict):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    return value


__all__ = ["anonymize_upload", "evaluate_uploads", "FileResult", "ProcessingFailed",
           "plain_json", "MAX_LISTED_FACES"]
