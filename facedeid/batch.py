"""Anonymize many files: plan input → output paths, process each, never stop on a bad file.

Used by ``facedeid anonymize``; usable from Python for the same behaviour. Nothing is lost and
nothing is left behind:

- every path the run writes (outputs, ``.json`` sidecars, ``--boxes-out``, ``--summary``) is
  checked against every input before any work; none may resolve to an input (after symlinks),
  and outputs stay inside the output folder whatever the inputs look like (``..``, absolute);
- every file of an input folder is accounted for: processed, listed as unsupported with the
  reason, counted as of unknown type or hidden, or reported as failed (symlink loops,
  unreadable folders); every page of a multi-page or animated image is processed;
- one file's failure, of any kind, is reported and the batch goes on.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FaceDeidError, InvalidParameterError
from .io.images import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, UNSUPPORTED_IMAGE_SUFFIXES, clean_exif,
                        os_error_reason, read_image_pages, to_pil, write_bytes_atomic,
                        write_pages_atomic)
from .pipeline import Anonymizer

if TYPE_CHECKING:
    from .video import VideoOptions

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif"}
NO_FACE_STATUSES = ("kept", "skipped", "obfuscated")


@dataclass
class Job:
    """One input and where its results go.

    Attributes:
        source: the input file (a ``str`` for a webcam index or stream URL).
        target: the output file.
        kind: ``"image"`` or ``"video"``.
        boxes: for a video with ``--boxes-out``, the JSON file of its per-frame boxes.
    """

    source: Path | str
    target: Path
    kind: str
    boxes: Path | None = None


@dataclass
class Outcome:
    """What happened to one input."""

    source: str
    target: str | None
    status: str  # "anonymized" | "kept" | "skipped" | "obfuscated" | "failed" | "unsupported"
    faces: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    audit: dict | None = None  # the --verify report of the written output


@dataclass
class BatchPlan:
    """The jobs of a run and everything else found in its inputs.

    Attributes:
        jobs: files to process, each with its checked output paths.
        outcomes: inputs settled while planning: failed (missing, unreadable, symlink loop,
            output clash) or unsupported (an image type facedeid cannot read).
        protected: real paths of every input file seen (including files of unknown type in
            input folders): nothing is ever written there.
        ignored: files of unknown type in input folders, counted per suffix.
        hidden: hidden files and folders in input folders (not processed).
    """

    jobs: list[Job] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    protected: set[Path] = field(default_factory=set)
    ignored: dict[str, int] = field(default_factory=dict)
    hidden: int = 0


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in UNSUPPORTED_IMAGE_SUFFIXES:
        return "unsupported"
    return None


def _real(path: Path | str) -> Path:
    """The path with every symlink followed; never raises on loops (unlike ``Path.resolve``)."""
    return Path(os.path.realpath(path))


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be used as an input, or ``None`` when it can."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ENOENT:
            return "broken symbolic link (its target does not exist)" if os.path.islink(path) \
                else "no such file or folder"
        return os_error_reason(error)
    return None


def plan_jobs(inputs: Sequence[str | Path], output: str | Path) -> tuple[list[Job], list[Outcome]]:
    """Jobs and planning failures for ``inputs`` (see :func:`plan_batch`, which says more)."""
    plan = plan_batch(inputs, output)
    return plan.jobs, plan.outcomes


def plan_batch(inputs: Sequence[str | Path], output: str | Path, *, live: Sequence[str] = (),
               sidecars: bool = False, boxes_out: str | Path | None = None,
               boxes_in: str | Path | None = None, summary: str | Path | None = None) -> BatchPlan:
    """Map inputs to outputs and check every path the run will write, before any work.

    A folder is walked recursively (symlinked sub-folders are not followed) and mirrored under
    ``output``; an ``output`` inside an input folder is not walked. A file named explicitly
    always yields a job (so a non-image gets a clear error). With one file input, ``output``
    may be a file name with a known suffix.

    Args:
        live: webcam indices / stream URLs; each becomes a video job (``output`` itself when it
            names a video file and there is one live input, else ``output/webcamN.mp4``).
        sidecars: whether ``OUTPUT.json`` is written beside each image output.
        boxes_out: ``--boxes-out``: one file, or an existing folder for one file per video.
        boxes_in: ``--boxes-in`` (an input: never written).
        summary: ``--summary`` JSON file.

    Raises:
        InvalidParameterError: the output folder is an input folder (or would put results over
            one), ``output`` is an existing file while several results are due, or
            ``--summary`` / ``--boxes-out`` is an input file, a missing folder, an output of
            this run, or one boxes file for several videos.
    """
    output = Path(output)
    output_real = _real(output)
    plan = BatchPlan()
    file_inputs = [Path(raw) for raw in inputs]
    single_file_target = (len(file_inputs) == 1 and not live and file_inputs[0].is_file()
                          and _kind(output) is not None and not output.is_dir())
    if output.exists() and not output.is_dir() and not single_file_target \
            and not (len(live) == 1 and not file_inputs):
        raise InvalidParameterError(
            f"-o {output} is an existing file; with several inputs or a folder, -o must name a "
            "folder")
    input_folders = []
    for source in file_inputs:
        reason = _unreadable(source)
        if reason is not None:
            plan.outcomes.append(Outcome(str(source), None, "failed", error=reason))
            continue
        if source.is_dir():
            _check_output_folder(source, output)
            input_folders.append(_real(source))
            _scan_folder(source, output / _mirror_name(source), output_real, plan)
        else:
            _add_file(source, output if single_file_target else output / source.name, plan,
                      named=True)
    for index, spec in enumerate(live):
        if output.suffix.lower() in VIDEO_SUFFIXES and len(live) == 1:
            target = output
        else:
            target = output / (f"webcam{spec}.mp4" if spec.isdigit() else f"stream{index}.mp4")
        plan.jobs.append(Job(spec, target, "video"))  # source stays a str: a URL is no Path
    if boxes_in:
        plan.protected.add(_real(boxes_in))
    _assign_boxes(plan, boxes_out)
    output_is_a_file = single_file_target or (len(live) == 1 and not file_inputs)
    written = _check_targets(plan, output_real, sidecars, may_be_output=output_is_a_file)
    side_outputs = {"--summary": summary, "--boxes-out": _boxes_file(boxes_out)}
    _check_side_outputs(plan, input_folders, written, side_outputs)
    return plan


def _mirror_name(folder: Path) -> str:
    """The folder's own name, also for ``.``, ``..`` and ``/`` (whose ``Path.name`` is empty
    or ``..``, which would put results beside or above the output folder)."""
    return Path(os.path.abspath(folder)).name or "root"


def _check_output_folder(folder: Path, output: Path) -> None:
    folder_real = _real(folder)
    if _real(output) == folder_real or _real(output / _mirror_name(folder)) == folder_real:
        raise InvalidParameterError(
            f"the output folder {output} would put results over the input folder {folder}; "
            f"pick another output folder (e.g. -o {Path(os.path.abspath(folder)).name}_anon)")


def _scan_folder(folder: Path, mirror: Path, output_real: Path, plan: BatchPlan) -> None:
    """Walk ``folder``; every entry becomes a job, or is unsupported, ignored, hidden or failed."""
    def unreadable_folder(error: OSError) -> None:
        plan.outcomes.append(Outcome(str(error.filename), None, "failed",
                                     error=f"cannot list this folder: {error.strerror}"))

    for root, folders, files in os.walk(folder, onerror=unreadable_folder):
        root_path = Path(root)
        walked = []
        for name in sorted(folders):
            path = root_path / name
            if name.startswith("."):
                plan.hidden += 1
            elif path.is_symlink():
                plan.outcomes.append(Outcome(
                    str(path), None, "unsupported",
                    error="symbolic link to a folder: not followed (name it as an input to "
                          "include it)"))
            elif _real(path) != output_real:
                walked.append(name)
        folders[:] = walked
        for name in sorted(files):
            path = root_path / name
            if name.startswith("."):
                plan.hidden += 1
                plan.protected.add(_real(path))
                continue
            _add_file(path, mirror / path.relative_to(folder), plan, named=False)


def _add_file(path: Path, target: Path, plan: BatchPlan, *, named: bool) -> None:
    """One file of the inputs: a job, or an outcome / count saying why it is not processed."""
    kind = _kind(path)
    reason = _unreadable(path)
    if reason is not None:
        plan.outcomes.append(Outcome(str(path), None, "failed", error=reason))
        return
    plan.protected.add(_real(path))
    if kind is None and not named:
        suffix = path.suffix.lower() or "(no suffix)"
        plan.ignored[suffix] = plan.ignored.get(suffix, 0) + 1
        return
    if not stat.S_ISREG(os.stat(path).st_mode):
        # a FIFO or device would block or never end; only plain files are read
        plan.outcomes.append(Outcome(str(path), None, "failed",
                                     error="not a regular file (a pipe, socket or device)"))
    elif kind == "unsupported":
        plan.outcomes.append(Outcome(str(path), None, "unsupported",
                                     error=UNSUPPORTED_IMAGE_SUFFIXES[path.suffix.lower()]))
    else:
        plan.jobs.append(Job(path, target, kind or "image"))


def _assign_boxes(plan: BatchPlan, boxes_out: str | Path | None) -> None:
    """Give each video job its boxes file (``--boxes-out``: a file, or a folder of them)."""
    if not boxes_out:
        return
    videos = [job for job in plan.jobs if job.kind == "video"]
    path = Path(boxes_out)
    if path.is_dir():
        for job in videos:
            job.boxes = path / f"{job.target.name}.boxes.json"
        return
    if str(boxes_out).endswith(("/", os.sep)):
        raise InvalidParameterError(f"--boxes-out {boxes_out}: no such folder; create it first")
    if not path.parent.is_dir():
        raise InvalidParameterError(
            f"--boxes-out {boxes_out}: the folder {path.parent} does not exist; create it first")
    if len(videos) > 1:
        raise InvalidParameterError(
            f"--boxes-out {boxes_out} names one file but {len(videos)} videos are processed; "
            "give an existing folder to get one boxes file per video")
    for job in videos:
        job.boxes = path


def _boxes_file(boxes_out: str | Path | None) -> Path | None:
    """``--boxes-out`` when it names one file (folders are checked per video)."""
    if boxes_out and not Path(boxes_out).is_dir():
        return Path(boxes_out)
    return None


def _check_targets(plan: BatchPlan, output_real: Path, sidecars: bool,
                   may_be_output: bool) -> dict[Path, str]:
    """Fail jobs whose output, sidecar or boxes file is an input, lies outside the output
    folder, or is also another job's.

    Returns:
        The real path of every output and sidecar the kept jobs write → its input.
    """
    seen: dict[Path, str] = {}
    kept = []
    for job in plan.jobs:
        target_real = _real(job.target)
        error = None
        if target_real in plan.protected:
            error = "output path is an input file; refusing to overwrite it"
        elif not (output_real in target_real.parents
                  or (may_be_output and target_real == output_real)):
            error = f"output path {target_real} lies outside the output folder {output_real}"
        elif target_real in seen:
            error = f"two inputs map to the same output (also {seen[target_real]})"
        written = [("the --json sidecar", job.target.with_name(job.target.name + ".json"))] \
            if sidecars and job.kind == "image" else []
        if job.boxes is not None:
            written.append(("the --boxes-out file", job.boxes))
        for what, path in written:
            path_real = _real(path)
            if error is None and path_real in plan.protected:
                error = f"{what} {path} is an input file; refusing to overwrite it"
            elif error is None and path_real in seen:
                error = f"{what} {path} would also be written for {seen[path_real]}"
        if error is not None:
            plan.outcomes.append(Outcome(str(job.source), str(job.target), "failed", error=error))
            continue
        seen[target_real] = str(job.source)
        for _, path in written:
            seen[_real(path)] = str(job.source)
        kept.append(job)
    plan.jobs = kept
    boxes = {_real(job.boxes) for job in kept if job.boxes is not None}
    return {path: source for path, source in seen.items() if path not in boxes}


def _check_side_outputs(plan: BatchPlan, input_folders: list[Path], outputs: dict[Path, str],
                        side_outputs: dict[str, Path | str | None]) -> None:
    """``--summary`` and a single ``--boxes-out`` file: not an input, not inside an input
    folder as an existing file, not an output of this run, not each other, in a real folder."""
    chosen: dict[Path, str] = {}
    for option, value in side_outputs.items():
        if not value:
            continue
        path = Path(value)
        path_real = _real(path)
        if path_real in plan.protected or (path.exists() and any(
                folder in path_real.parents for folder in input_folders)):
            raise InvalidParameterError(
                f"{option} {value} is an input file; refusing to overwrite it (write it "
                "somewhere else)")
        if path.is_dir():
            raise InvalidParameterError(f"{option} {value} is a folder; give a file name")
        if not path.parent.is_dir():
            raise InvalidParameterError(
                f"{option} {value}: the folder {path.parent} does not exist; create it first")
        if path_real in outputs:
            raise InvalidParameterError(
                f"{option} {value} is also the output for {outputs[path_real]}; give another name")
        if path_real in chosen:
            raise InvalidParameterError(f"{option} and {chosen[path_real]} name the same file")
        chosen[path_real] = option


def anonymize_image_file(job: Job, anonymizer: Anonymizer, *, protected: set[Path],
                         keep_metadata: bool = False, keep_gps: bool = False,
                         write_json: bool = False, quality: int = 95,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> Outcome:
    """Read, anonymize and atomically write one image, every page of it; errors of any kind
    become a failed outcome (only interrupts and SIGTERM propagate, after cleanup)."""
    try:
        pages = read_image_pages(job.source, max_pixels=max_pixels)
        results = [anonymizer.anonymize(page.rgb) for page in pages]
        faces = sum(len(result.faces) for result in results)
        action = "anonymized" if faces else results[0].action
        warnings = [warning for result in results for warning in result.warnings] \
            if len(results) == 1 else \
            [f"page {index + 1} of {len(results)}: {warning}"
             for index, result in enumerate(results) for warning in result.warnings]
        outcome = Outcome(str(job.source), str(job.target), action, faces, warnings=warnings)
        if action == "skipped":
            outcome.target = None
            return outcome
        exif = clean_exif(pages[0].exif, keep_gps) if keep_metadata else None
        durations = [page.duration for page in pages]
        write_pages_atomic(job.target, [to_pil(page, result.image, result.coverage)
                                        for page, result in zip(pages, results)],
                           durations=durations if None not in durations else None,
                           loop=pages[0].loop, exif=exif, quality=quality, protected=protected)
    except FaceDeidError as error:
        return Outcome(str(job.source), None, "failed", error=str(error))
    except Exception as error:  # a method or decoder bug must not stop the batch
        log.debug("unexpected error on %s", job.source, exc_info=True)
        return Outcome(str(job.source), None, "failed", error=f"{type(error).__name__}: {error}")
    if write_json:
        try:
            _write_sidecar(job, anonymizer, results, protected)
        except Exception as error:
            outcome.status, outcome.error = "failed", (
                f"the image was written but its .json sidecar was not: {type(error).__name__}: "
                f"{error}")
    return outcome


def _write_sidecar(job: Job, anonymizer: Anonymizer, results: list, protected: set[Path]) -> None:
    faces = []
    for index, result in enumerate(results):
        for face in result.faces:
            faces.append(dict(face.to_dict(), page=index) if len(results) > 1 else face.to_dict())
    sidecar = {"source": str(job.source), "output": str(job.target),
               "method": anonymizer.method.name, "params": _jsonable(anonymizer.method.config),
               "detector": anonymizer.detector.name,
               "action": "anonymized" if faces else results[0].action, "pages": len(results),
               "faces": faces,
               # faces the method could not handle itself and covered with a classic operator
               "fallback_faces": sum("fallback" in face.get("method_notes", {}) for face in faces)}
    write_bytes_atomic(job.target.with_name(job.target.name + ".json"),
                       json.dumps(sidecar, indent=2).encode(), protected=protected)


def _jsonable(config: dict) -> dict:
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in config.items()}


@dataclass(frozen=True)
class JobSettings:
    """How every job of a run is processed and written: the same for each job and each engine
    (plain values, so that a Ray actor receives them as they are).

    Attributes:
        keep_metadata, keep_gps: copy EXIF (and GPS) into image outputs.
        write_json: write ``OUTPUT.json`` beside each image output.
        quality: JPEG/WebP quality.
        max_pixels: refuse larger images.
        verify: ``None``, ``"report"`` or ``"fix"``: audit each written output (``--verify``).
        video: :class:`facedeid.video.VideoOptions` for video jobs (``None``: the defaults);
            each job's own ``boxes`` file replaces ``boxes_out``.
    """

    keep_metadata: bool = False
    keep_gps: bool = False
    write_json: bool = False
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    verify: str | None = None
    video: VideoOptions | None = None


def build_auditor(settings: JobSettings, anonymizer: Anonymizer):
    """The ``--verify`` auditor (models loaded once per process), or ``None`` without it."""
    if not settings.verify:
        return None
    from .verify import LeakAuditor
    return LeakAuditor(anonymizer_detector=anonymizer.detector.name)


def process_job(job: Job, anonymizer: Anonymizer, settings: JobSettings, *,
                protected: set[Path], auditor=None) -> Outcome:
    """One job of a batch, image or video, audited with ``auditor`` when given: the one loop
    body every engine runs (the local loop and each Ray actor), so results are identical."""
    if job.kind == "video":
        outcome = _anonymize_video_file(job, anonymizer, settings, protected)
    else:
        outcome = anonymize_image_file(job, anonymizer, protected=protected,
                                       keep_metadata=settings.keep_metadata,
                                       keep_gps=settings.keep_gps, write_json=settings.write_json,
                                       quality=settings.quality, max_pixels=settings.max_pixels)
    if auditor is not None and outcome.target:
        _audit(job, outcome, anonymizer, auditor, settings, protected)
    return outcome


def _anonymize_video_file(job: Job, anonymizer: Anonymizer, settings: JobSettings,
                          protected: set[Path]) -> Outcome:
    """One video job; an error of any type fails this video only, never the batch."""
    import dataclasses
    try:
        from .video import VideoOptions, anonymize_video_job
    except ImportError:
        return Outcome(str(job.source), None, "failed",
                       error="video input needs the video pipeline (facedeid.video), not available")
    # The planner chose and checked this video's boxes file; hand the video code that file.
    options = dataclasses.replace(settings.video or VideoOptions(),
                                  boxes_out=Path(job.boxes) if job.boxes else None)
    try:
        return anonymize_video_job(job, anonymizer, options, protected=protected)
    except Exception as error:  # e.g. cv2.error from a method: report, go on with the batch
        return Outcome(str(job.source), None, "failed", error=f"{type(error).__name__}: {error}")


def _audit(job: Job, outcome: Outcome, anonymizer: Anonymizer, auditor, settings: JobSettings,
           protected: set[Path]) -> None:
    """``--verify``: audit one written output; ``fix`` mends image leaks; record it all."""
    from .verify import fix_file, verify_pair

    report = verify_pair(job.source, outcome.target, auditor=auditor)
    if report.leaked and settings.verify == "fix":
        before = len(report.leaks)
        report = fix_file(job.source, outcome.target, report, anonymizer, auditor=auditor,
                          quality=settings.quality, protected=protected)
        outcome.warnings.append(f"--verify fix re-anonymized {before} leaked face(s); "
                                f"{len(report.leaks)} left after the re-audit")
    outcome.audit = report.to_dict()
    if report.leaked:
        frames = sorted({leak.frame for leak in report.leaks if leak.frame is not None})
        where = f" in frame(s) {frames[:12]}" if frames else ""
        outcome.warnings.append(f"LEAK: the audit found {len(report.leaks)} face(s) still "
                                f"visible or recognizable{where}")
    elif report.status == "error":
        outcome.warnings.append(f"the audit could not check this output: {report.error}")
    if settings.write_json and job.kind == "image":
        _add_audit_to_sidecar(outcome, protected)


def _add_audit_to_sidecar(outcome: Outcome, protected: set[Path]) -> None:
    path = Path(outcome.target).with_name(Path(outcome.target).name + ".json")
    if not path.is_file():
        return
    sidecar = json.loads(path.read_text())
    sidecar["audit"] = outcome.audit
    write_bytes_atomic(path, json.dumps(sidecar, indent=2).encode(), protected=protected)


def run_jobs(jobs: Sequence[Job], anonymizer: Anonymizer, settings: JobSettings, *,
             protected: set[Path], auditor=None):
    """The local engine: every job in order in this process; yields ``(index, outcome)`` as
    each finishes (the Ray engine yields the same pairs, in the order they finish)."""
    for index, job in enumerate(jobs):
        yield index, process_job(job, anonymizer, settings, protected=protected, auditor=auditor)


def summarize(outcomes: list[Outcome], *, ignored: dict[str, int] | None = None,
              hidden: int = 0) -> dict:
    """Counts per status, and by name every file a person must check by eye.

    Returns:
        ``files``, ``faces``, ``by_status``; ``failures`` (as dicts); ``without_faces`` (no
        face found: kept, skipped or obfuscated); ``weak`` (anonymized, with warnings such as
        pages without a face or second-chance detections); ``unsupported`` (with the reason);
        ``ignored`` (files of unknown type per suffix) and ``hidden``; ``check_by_eye``: all
        the named files with why, in one list.
    """
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    check = []
    for outcome in outcomes:
        if outcome.status == "failed":
            check.append({"source": outcome.source, "why": f"failed: {outcome.error}"})
        elif outcome.status == "unsupported":
            check.append({"source": outcome.source, "why": f"unsupported: {outcome.error}"})
        elif outcome.status in NO_FACE_STATUSES:
            check.append({"source": outcome.source, "why": f"no face found ({outcome.status})"})
        elif outcome.warnings:
            check.append({"source": outcome.source, "why": "weak: " + "; ".join(outcome.warnings)})
    ignored = dict(sorted((ignored or {}).items()))
    return {"files": len(outcomes), "faces": sum(o.faces for o in outcomes), "by_status": counts,
            "failures": [asdict(o) for o in outcomes if o.status == "failed"],
            "without_faces": [o.source for o in outcomes if o.status in NO_FACE_STATUSES],
            "weak": [{"source": o.source, "warnings": o.warnings} for o in outcomes
                     if o.status == "anonymized" and o.warnings],
            "unsupported": [{"source": o.source, "reason": o.error} for o in outcomes
                            if o.status == "unsupported"],
            "ignored": {"files": sum(ignored.values()), "by_suffix": ignored},
            "hidden": hidden, "check_by_eye": check,
            "leaked": [o.source for o in outcomes
                       if o.audit is not None and o.audit.get("leaked")]}


__all__ = ["Job", "Outcome", "BatchPlan", "JobSettings", "plan_batch", "plan_jobs",
           "anonymize_image_file", "process_job", "run_jobs", "build_auditor", "summarize",
           "VIDEO_SUFFIXES"]
