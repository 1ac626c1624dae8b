"""Anonymize many files: plan input → output paths, process each, never stop on a bad file.

Used by ``facedeid anonymize``; usable from Python for the same behaviour.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import FaceDeidError
from .io.images import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, clean_exif, read_image, to_pil,
                        write_image_atomic)
from .pipeline import Anonymizer

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif"}


@dataclass
class Job:
    """One input file and where its result goes."""

    source: Path
    target: Path
    kind: str  # "image" or "video"


@dataclass
class Outcome:
    """What happened to one input."""

    source: str
    target: str | None
    status: str  # "anonymized" | "kept" | "skipped" | "obfuscated" | "failed"
    faces: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def plan_jobs(inputs: list[str | Path], output: str | Path) -> tuple[list[Job], list[Outcome]]:
    """Map inputs to outputs.

    A folder is walked recursively and mirrored under ``output``; files of unknown type inside
    folders are ignored, while a file named explicitly always yields a job (so a non-image gets
    a clear error). When ``output`` lies inside an input folder it is not walked. With one file
    input, ``output`` may be a file name with a known suffix.

    Returns:
        The jobs, and the inputs that failed already at planning (missing paths, clashes).
    """
    output = Path(output)
    output_resolved = output.resolve()
    jobs: list[Job] = []
    failures: list[Outcome] = []
    single_file_target = (len(inputs) == 1 and Path(inputs[0]).is_file()
                          and _kind(output) is not None)
    for raw in inputs:
        source = Path(raw)
        if not source.exists():
            failures.append(Outcome(str(source), None, "failed", error="no such file or folder"))
            continue
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                resolved = path.resolve()
                if not path.is_file() or output_resolved in resolved.parents \
                        or any(part.startswith(".") for part in path.relative_to(source).parts):
                    continue
                kind = _kind(path)
                if kind is not None:
                    jobs.append(Job(path, output / source.name / path.relative_to(source), kind))
        else:
            target = output if single_file_target else output / source.name
            jobs.append(Job(source, target, _kind(source) or "image"))
    protected = {job.source.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    kept = []
    for job in jobs:
        resolved = job.target.resolve()
        if resolved in protected:
            failures.append(Outcome(str(job.source), str(job.target), "failed",
                                    error="output path is an input file; refusing to overwrite it"))
        elif resolved in seen:
            failures.append(Outcome(str(job.source), str(job.target), "failed",
                                    error=f"two inputs map to the same output (also {seen[resolved]})"))
        else:
            seen[resolved] = job.source
            kept.append(job)
    return kept, failures


def anonymize_image_file(job: Job, anonymizer: Anonymizer, *, protected: set[Path],
                         keep_metadata: bool = False, keep_gps: bool = False,
                         write_json: bool = False, quality: int = 95,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> Outcome:
    """Read, anonymize and atomically write one image; errors become a failed outcome."""
    try:
        loaded = read_image(job.source, max_pixels=max_pixels)
        result = anonymizer.anonymize(loaded.rgb)
        outcome = Outcome(str(job.source), str(job.target), result.action, len(result.faces),
                          warnings=list(result.warnings))
        if result.action == "skipped":
            outcome.target = None
            return outcome
        exif = clean_exif(loaded.exif, keep_gps) if keep_metadata else None
        write_image_atomic(job.target, to_pil(loaded, result.image, result.coverage), exif=exif,
                           quality=quality, protected=protected)
        if write_json:
            sidecar = {"source": str(job.source), "output": str(job.target),
                       "method": anonymizer.method.name, "params": _jsonable(anonymizer.method.config),
                       "detector": anonymizer.detector.name, "action": result.action,
                       "faces": [face.to_dict() for face in result.faces]}
            json_path = job.target.with_name(job.target.name + ".json")
            json_path.write_text(json.dumps(sidecar, indent=2))
        return outcome
    except FaceDeidError as error:
        return Outcome(str(job.source), None, "failed", error=str(error))
    except Exception as error:  # a method or decoder bug must not stop the batch
        log.debug("unexpected error on %s", job.source, exc_info=True)
        return Outcome(str(job.source), None, "failed", error=f"{type(error).__name__}: {error}")


def _jsonable(config: dict) -> dict:
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in config.items()}


def summarize(outcomes: list[Outcome]) -> dict:
    """Counts per status, plus the failures with their reasons."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return {"files": len(outcomes), "faces": sum(o.faces for o in outcomes), "by_status": counts,
            "failures": [asdict(o) for o in outcomes if o.status == "failed"],
            "without_faces": [o.source for o in outcomes if o.status in ("kept", "skipped", "obfuscated")]}


__all__ = ["Job", "Outcome", "plan_jobs", "anonymize_image_file", "summarize", "VIDEO_SUFFIXES"]
