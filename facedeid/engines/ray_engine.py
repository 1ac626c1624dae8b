"""The ``ray`` engine: the jobs of a batch on a Ray cluster, through Ray Data.

The driver plans exactly as the local engine does (:func:`facedeid.batch.plan_batch`: path
safety, never-overwrite checks, sidecar and summary paths), then hands the list of jobs to Ray
Data (``ray.data.from_items``) and maps it in batches through a pool of actors
(``map_batches`` with a fixed ``ActorPoolStrategy`` of N actors). Each actor builds its
:class:`~facedeid.pipeline.Anonymizer` once and runs :func:`facedeid.batch.process_job` (the
local engine's own loop body) on every job, so outputs are written by the same functions
(atomic, never over an input, the same JSON sidecars) and are bit-for-bit the same: a
stochastic method's generator is seeded from the run seed and the face's index in its image,
never from which process or in what order it runs.
Images go in batches of :data:`IMAGES_PER_BATCH`; videos one file per task. The driver gathers
the :class:`~facedeid.batch.Outcome` of every job for the same summary and exit code.

Faults: an item's own failure is a ``failed`` outcome inside the actor (never a failed batch).
An actor whose process dies (killed, out of memory, a crash in native code) is restarted by Ray
and its batch retried up to :data:`TASK_RETRIES` times; a batch that still fails is skipped by
Ray Data (``max_errored_blocks``) and its jobs run again one per batch, so a file that crashes
its worker every time ends as that file's ``failed`` outcome and the run goes on.

``facedeid evaluate --engine ray`` runs the evaluator's method stage (each probe de-identified,
the parrot attacker's gallery too) on Ray actors as well (:class:`RayEvaluator`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..batch import Job, JobSettings, Outcome, build_auditor, process_job
from ..errors import FaceDeidError
from ..evaluation.runner import EvalConfig, Evaluator, MethodStage

log = logging.getLogger(__name__)

#: images per Ray Data batch (and block): enough to hide the per-task cost (8 cost about
#: 10 % more CPU per image in a 300-image comparison), few enough to balance the actors
IMAGES_PER_BATCH = 32
#: probes per actor call in the evaluator's method stage (outputs travel back: smaller chunks)
PROBES_PER_CALL = 8
#: times a batch is retried on a restarted actor after its worker process died
TASK_RETRIES = 2
#: seconds to wait for a TCP answer from ``--address`` before calling the cluster unreachable
CONNECT_TIMEOUT_S = 5.0


class ClusterUnavailableError(FaceDeidError):
    """The Ray cluster named by ``--address`` cannot be reached (or Ray is not installed)."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is part of the engine, not optional
    except ImportError as error:
        raise ClusterUnavailableError(
            f"--engine ray needs Ray with Ray Data (pip install 'ray[data]'): {error}") from None
    return ray


def check_reachable(address: str | None) -> None:
    """Fail fast, with the address in the message, when nothing listens at ``HOST:PORT``.

    ``ray.init`` would otherwise retry for a minute and end in a traceback. ``None`` (start
    Ray here, or ``RAY_ADDRESS``) and ``auto`` (the cluster started on this machine) are left
    to ``ray.init``, which fails quickly for them.
    """
    if address in (None, "", "auto", "local"):
        return
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnavailableError(
            f"--address {address}: expected auto or HOST:PORT (the address `ray start --head` "
            "printed, port 6379 by default)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ClusterUnavailableError(
            f"no Ray cluster answers at {address} ({reason}); start one with `ray start --head` "
            "or give the address it printed (see docs/cluster.md)") from None


@contextmanager
def ray_cluster(address: str | None = None):
    """Connect to the cluster at ``address`` (``None``: ``RAY_ADDRESS`` or a Ray started on
    this machine for the run) before any work, and disconnect after.

    Raises:
        ClusterUnavailableError: the cluster cannot be reached; nothing has been written.
    """
    ray = _import_ray()
    if ray.is_initialized():  # the caller's own session (a notebook, a test): leave it be
        _quiet_ray_data(ray)
        yield ray
        return
    check_reachable(address)
    try:
        ray.init(address=None if address in (None, "", "local") else address,
                 logging_level=logging.WARNING, configure_logging=False)
    except Exception as error:  # noqa: BLE001 - ConnectionError, AuthenticationError, ...
        raise ClusterUnavailableError(
            f"cannot connect to the Ray cluster at {address or 'this machine'}: {error}") from None
    try:
        _quiet_ray_data(ray)
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data(ray) -> None:
    """The command line shows its own progress: no Ray Data bars or per-stage info lines."""
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"


def cluster_cpus() -> int:
    """CPUs of the connected cluster: the default number of actors (one per CPU)."""
    import ray
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# -- anonymize ---------------------------------------------------------------------------------
class JobActor:
    """A Ray Data actor: models loaded once, then :func:`process_job` on each job of a batch.

    Args:
        make_anonymizer: builds the run's Anonymizer (called once, in the actor's process).
        settings: the run's :class:`JobSettings`.
        protected: real paths of every input: never written (checked again at each write).
        working_dir: the driver's working directory: relative input and output paths mean
            there what they mean on the driver (and sidecars name them the same way).
    """

    def __init__(self, make_anonymizer: Callable, settings: JobSettings, protected: set[Path],
                 working_dir: str | None = None):
        if working_dir and os.path.isdir(working_dir):
            os.chdir(working_dir)  # this actor's own process: nothing else shares its cwd
        self.anonymizer = make_anonymizer()
        self.settings = settings
        self.protected = protected
        self.auditor = build_auditor(settings, self.anonymizer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outcomes = []
        for index, source, target, kind, boxes in zip(batch["index"], batch["source"],
                                                      batch["target"], batch["kind"],
                                                      batch["boxes"]):
            job = Job(Path(str(source)), Path(str(target)), str(kind),
                      Path(str(boxes)) if boxes else None)
            try:
                outcome = process_job(job, self.anonymizer, self.settings,
                                      protected=self.protected, auditor=self.auditor)
            except Exception as error:  # noqa: BLE001 - one item never fails its batch
                outcome = Outcome(str(job.source), None, "failed",
                                  error=f"{type(error).__name__}: {error}")
            outcomes.append(json.dumps(dataclasses.asdict(outcome)))
        return {"index": np.asarray(batch["index"], dtype=np.int64),
                "outcome": np.asarray(outcomes, dtype=object)}


def _job_row(index: int, job: Job) -> dict:
    return {"index": index, "source": str(job.source), "target": str(job.target),
            "kind": job.kind, "boxes": str(job.boxes) if job.boxes else ""}


def run_jobs_on_ray(jobs: Sequence[Job], make_anonymizer: Callable, settings: JobSettings, *,
                    protected: set[Path], num_actors: int | None = None,
                    images_per_batch: int = IMAGES_PER_BATCH) -> Iterator[tuple[int, Outcome]]:
    """The ``ray`` engine: yields ``(index in jobs, outcome)`` for every job, as batches finish.

    Call inside :func:`ray_cluster`. ``make_anonymizer`` must be picklable (a module-level
    function or a ``functools.partial`` of one): each actor calls it once.
    """
    ray = _import_ray()
    if not jobs:
        return
    if not ray.is_initialized():
        raise FaceDeidError("run_jobs_on_ray runs inside ray_cluster(address)")
    actors = num_actors or cluster_cpus()
    if settings.video is not None and getattr(settings.video, "progress", False):
        # a per-video progress bar from every actor would garble the driver's terminal
        settings = dataclasses.replace(settings,
                                       video=dataclasses.replace(settings.video, progress=False))
    data_context = ray.data.DataContext.get_current()
    previous_limit, data_context.max_errored_blocks = data_context.max_errored_blocks, -1
    try:  # a lost batch is skipped, then re-run below (see the module docstring)
        yield from _run_passes(ray, jobs, actors, make_anonymizer, settings, protected,
                               images_per_batch)
    finally:
        data_context.max_errored_blocks = previous_limit


def _run_passes(ray, jobs: Sequence[Job], actors: int, make_anonymizer: Callable,
                settings: JobSettings, protected: set[Path],
                images_per_batch: int) -> Iterator[tuple[int, Outcome]]:
    """Images in batches, then videos one per task, then whatever a dead worker lost, one
    per task; a job still without an outcome killed its worker on every try."""
    images = [i for i, job in enumerate(jobs) if job.kind != "video"]
    videos = [i for i, job in enumerate(jobs) if job.kind == "video"]
    done: set[int] = set()
    for indices, per_batch in ((images, images_per_batch), (videos, 1)):
        for index, outcome in _map_jobs(ray, jobs, indices, per_batch, actors, make_anonymizer,
                                        settings, protected):
            done.add(index)
            yield index, outcome
    missing = [i for i in range(len(jobs)) if i not in done]
    if missing:
        log.warning("%d job(s) lost with a worker that died; running them again one by one",
                    len(missing))
        for index, outcome in _map_jobs(ray, jobs, missing, 1, actors, make_anonymizer,
                                        settings, protected):
            done.add(index)
            yield index, outcome
    for index in range(len(jobs)):
        if index not in done:
            yield index, Outcome(str(jobs[index].source), None, "failed",
                                 error="this file killed its Ray worker on every try (a "
                                       "crash in native code or out of memory?); run it alone "
                                       "with --engine local to see why")


def _map_jobs(ray, jobs: Sequence[Job], indices: list[int], per_batch: int, actors: int,
              make_anonymizer: Callable, settings: JobSettings,
              protected: set[Path]) -> Iterator[tuple[int, Outcome]]:
    """One Ray Data pass over ``jobs[indices]``: ``per_batch`` jobs per actor call."""
    if not indices:
        return
    # one block per batch (a block is Ray's unit of retry and of load balancing), bounded so
    # a million files do not make a million tiny objects
    blocks = min(math.ceil(len(indices) / per_batch), 20_000)
    dataset = ray.data.from_items([_job_row(i, jobs[i]) for i in indices],
                                  override_num_blocks=blocks)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options this way and names no replacement; its
        # default (retry a batch for ever) would never end on a file that kills its worker
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*",
                                category=DeprecationWarning)
        results = dataset.map_batches(
            JobActor, fn_constructor_kwargs={"make_anonymizer": make_anonymizer,
                                             "settings": settings, "protected": protected,
                                             "working_dir": os.getcwd()},
            batch_size=per_batch, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(
                size=max(1, min(actors, blocks)),
                # one job per batch (videos, the re-run of a lost batch): one task at a time per
                # actor, so that a worker's death takes no queued neighbour with it
                max_tasks_in_flight_per_actor=1 if per_batch == 1 else None),
            num_cpus=1, max_restarts=-1, max_task_retries=TASK_RETRIES)
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):  # whole blocks
        for index, outcome in zip(batch["index"], batch["outcome"]):
            yield int(index), Outcome(**json.loads(outcome))


# -- evaluate ---------------------------------------------------------------------------------
class RayEvaluator(Evaluator):
    """An :class:`Evaluator` whose method stage (every de-identified probe, the parrot
    attacker's galleries included) runs on Ray actors, :data:`PROBES_PER_CALL` probes per
    call, order kept. Use inside :func:`ray_cluster`.

    Detection on the originals, embeddings, services and metrics stay on the driver, where the
    evaluator's caches are. Results equal the local evaluator's: each probe's output depends
    only on its image, its face and the seed (the face's generator is seeded ``[seed, 0]``).
    """

    def __init__(self, config: EvalConfig, restorer=None, *, num_actors: int | None = None):
        super().__init__(config, restorer)
        self.num_actors = num_actors
        self._pool = None

    def _actor_pool(self):
        import ray
        from ray.util import ActorPool
        if self._pool is None:
            remote = ray.remote(num_cpus=1, max_restarts=-1,
                                max_task_retries=TASK_RETRIES)(MethodStage)
            count = self.num_actors or cluster_cpus()
            quiet = dataclasses.replace(self.config, progress=False)  # the driver shows progress
            self._pool = ActorPool([remote.remote(quiet) for _ in range(count)])
        return self._pool

    def anonymize_all(self, spec, probes, seed=None, desc=None, anonymizer=None):
        """:meth:`Evaluator.anonymize_all`, chunk by chunk on the actors."""
        from tqdm import tqdm
        if anonymizer is not None:  # the parrot attack's own: the actors rebuild it by seed
            seed = anonymizer.seed
        # gallery entries from the cache carry no pixels: load them here, as the local
        # evaluator would, so that workers need no access to the dataset's files
        probes = [p if p.image is not None else dataclasses.replace(p, image=p.record.load())
                  for p in probes]
        starts = range(0, len(probes), PROBES_PER_CALL)
        chunks = [probes[start:start + PROBES_PER_CALL] for start in starts]
        results = self._actor_pool().map(
            lambda actor, chunk: actor.anonymize_all.remote(spec, chunk, seed), chunks)
        outputs, ok, failures = [], [], []
        for start, (part_outputs, part_ok, part_failures) in zip(
                starts, tqdm(results, total=len(chunks), disable=not self.config.progress,
                             desc=(desc or spec.title)[:24], unit="batch", dynamic_ncols=True)):
            outputs += part_outputs
            ok += [start + i for i in part_ok]
            failures += part_failures
        return outputs, ok, failures


__all__ = ["ClusterUnavailableError", "ray_cluster", "check_reachable", "cluster_cpus",
           "JobActor", "run_jobs_on_ray", "RayEvaluator",
           "PROBES_PER_CALL", "TASK_RETRIES"]
