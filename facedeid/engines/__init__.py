"""Where the jobs of a batch run.

``local``: one process, job after job (:func:`facedeid.batch.run_jobs`). ``ray``: a Ray cluster
(:mod:`facedeid.engines.ray_engine`), for datasets bigger than one machine. Both run the same
per-job function (:func:`facedeid.batch.process_job`) after the same planning on the driver,
so outputs, sidecars, summary and exit code do not depend on the engine.

Engines sit beside the command line, above the library: they import :mod:`facedeid.batch`
and :mod:`facedeid.evaluation`, and nothing below imports them. Ray is imported only when
the ``ray`` engine is used.
"""
from __future__ import annotations

import argparse

#: engine names, as ``--engine`` takes them
ENGINES = ("local", "ray")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--address``, ``--num-actors``: the same options for every command that
    runs a batch (``anonymize``, ``evaluate``)."""
    # here, not at the top: facedeid.cli imports this module (a Ray worker imports it first)
    from ..cli.common import positive_int

    group = parser.add_argument_group(
        "engine", "where the work runs; see docs/cluster.md for a multi-node Ray cluster")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this process (default); ray: actors on a Ray cluster, same "
                            "results, summary and exit code")
    group.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                       help="with --engine ray: the cluster to use; 'auto' = the one started on "
                            "this machine by `ray start`, HOST:PORT = its head node (default: "
                            "RAY_ADDRESS, else a Ray started on this machine for the run)")
    group.add_argument("--num-actors", type=positive_int, default=None, metavar="N",
                       help="with --engine ray: workers, each with its own copy of the models "
                            "(default: one per CPU of the cluster)")


__all__ = ["ENGINES", "add_engine_arguments"]
