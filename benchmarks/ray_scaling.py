"""Images per second of ``facedeid anonymize``: the local engine vs ``--engine ray`` with 1 and 2
actors, on the same CelebA photos, in one run (targets: Ray's overhead at 1 actor <= 15 %,
2 actors >= 1.7x one actor), and a projection for a 10-node cluster from the measured
per-actor throughput.

Each run is the whole command as a user runs it (``facedeid.cli.main``): planning, models
loaded (once per actor on Ray), every image decoded, anonymized and written, the summary.
The Ray runs use one Ray instance started here beforehand (on a real cluster it is already
up), so cluster start-up is not counted; actor start-up and model loading are. The load
average is recorded before and after each run: the machine is shared. So is the CPU time of
each run (this process and every process below it, Ray's included, read from /proc): on a
machine busy with other work the wall time says how much CPU the run was given, the CPU time
what it cost.

Writes ``benchmarks/results/ray_scaling.json`` and the table between the markers in
``docs/cluster.md``.

Usage::

    python benchmarks/ray_scaling.py [--images 2000] [--method mosaic] [--cores-per-node 16]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CELEBA = REPO.parent / "shared" / "data" / "celeba-first10k" / "img_align_celeba"
RESULTS = REPO / "benchmarks" / "results" / "ray_scaling.json"
DOC = REPO / "docs" / "cluster.md"
BEGIN, END = "<!-- ray_scaling:begin -->", "<!-- ray_scaling:end -->"


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _process_tree_cpu() -> dict[int, tuple[str, float]]:
    """``{pid: (role, CPU seconds)}`` of this process and every descendant, from /proc: the
    Ray processes ``ray.init`` started here (GCS, raylet, workers) are all below it. Roles:
    ``driver`` (this process), ``workers`` (``ray::...`` worker processes: the actors) and
    ``ray daemons`` (the rest)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    mine, grew = {os.getpid()}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in mine} - mine
        grew, mine = bool(found), mine | found
    return {pid: (_role(pid), cpu[pid]) for pid in mine}


def _role(pid: int) -> str:
    if pid == os.getpid():
        return "driver"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "ray daemons"
    return "workers" if command.startswith(b"ray::") else "ray daemons"


class CpuMeter(threading.Thread):
    """Samples :func:`_process_tree_cpu` every 0.2 s during a run: actors exit when a run
    ends, so their CPU time is read while they live (at most one interval of it is missed)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.start_values = {pid: value for pid, (_, value) in _process_tree_cpu().items()}
        self.last: dict[int, tuple[str, float]] = {}
        self.stopped = threading.Event()

    def _sample(self) -> None:
        for pid, (role, value) in _process_tree_cpu().items():
            # a worker's title becomes ray::... once it runs an actor: keep that role
            kept = self.last.get(pid, (role, 0.0))[0]
            self.last[pid] = (kept if kept == "workers" else role, value)

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self._sample()

    def seconds(self) -> dict[str, float]:
        """CPU seconds used since the start, per role."""
        self.stopped.set()
        self.join()
        self._sample()
        by_role = {"driver": 0.0, "workers": 0.0, "ray daemons": 0.0}
        for pid, (role, value) in self.last.items():
            by_role[role] += value - self.start_values.get(pid, 0.0)
        return by_role


def timed_run(name: str, arguments: list[str], images: int) -> dict:
    from facedeid.cli import main

    before = load_average()
    meter = CpuMeter()
    meter.start()
    started = time.perf_counter()
    code = main(arguments)
    seconds = time.perf_counter() - started
    by_role = meter.seconds()
    cpu = sum(by_role.values())
    row = {"run": name, "exit_code": code, "images": images, "seconds": round(seconds, 2),
           "images_per_s": round(images / seconds, 2), "cpu_s": round(cpu, 1),
           "cpu_s_by_role": {role: round(value, 1) for role, value in by_role.items()},
           "cpu_ms_per_image": round(1000 * cpu / images, 2),
           "cores_used": round(cpu / seconds, 2), "load_before": before,
           "load_after": load_average()}
    print(json.dumps(row), flush=True)
    return row


def projection(rows: list[dict], nodes: int, cores: int) -> dict:
    """Throughput of ``nodes`` x ``cores`` actors, one per core, and what one driver allows.

    Per-actor rate: images per CPU-second of the 1-actor run (Ray's processes included), i.e.
    what an actor does with a core to itself; efficiency: the CPU per image at 1 actor over
    that at 2 (what a second actor costs in coordination). The driver gathers every outcome:
    its CPU per image in the 2-actor run, counted as if it were all per image (part of it is a
    per-second cost of Ray Data's scheduling loop), bounds the cluster from below. The
    wall-time rates measured here depend on how busy the shared machine was and are reported
    beside the projection, not used in it.
    """
    _, one, two = rows
    per_actor = one["images"] / one["cpu_s"]
    efficiency = min(1.0, one["cpu_ms_per_image"] / two["cpu_ms_per_image"])
    actors = nodes * cores
    actor_bound = actors * per_actor * efficiency
    driver_ms = 1000 * two["cpu_s_by_role"]["driver"] / two["images"]
    driver_bound = 1000 / driver_ms if driver_ms > 0 else float("inf")
    rate = min(actor_bound, driver_bound)
    return {"nodes": nodes, "cores_per_node": cores, "actors": actors,
            "per_actor_images_per_cpu_s": round(per_actor, 2), "efficiency": round(efficiency, 3),
            "actor_bound_images_per_s": round(actor_bound, 1),
            "driver_ms_per_image": round(driver_ms, 3),
            "driver_bound_images_per_s": round(driver_bound, 1),
            "images_per_s": round(rate, 1),
            "hours_per_million_images": round(1e6 / rate / 3600, 2)}


def markdown(rows: list[dict], summary: dict) -> str:
    lines = ["| run | images | seconds | images/s | CPU s (driver / workers / Ray daemons) | "
             "CPU ms/image | cores used | load before | load after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        roles = " / ".join(f"{value:.1f}" for value in row["cpu_s_by_role"].values())
        lines.append(f"| {row['run']} | {row['images']} | {row['seconds']:.1f} | "
                     f"{row['images_per_s']:.2f} | {row['cpu_s']:.1f} ({roles}) | "
                     f"{row['cpu_ms_per_image']:.1f} | {row['cores_used']:.2f} | "
                     f"{row['load_before']:.2f} | {row['load_after']:.2f} |")
    p = summary["projection"]
    lines += ["", f"- Ray overhead at 1 actor: **{summary['overhead_1_actor_pct']:+.1f} %** "
              f"wall time (target <= 15 %); in CPU per image (Ray's own processes included): "
              f"**{summary['cpu_overhead_1_actor_pct']:+.1f} %**",
              f"- 2 actors vs 1 actor: **{summary['scaling_2_actors']:.2f}x** (target >= 1.7x); "
              f"2 actors vs the local engine: {summary['speedup_vs_local_2_actors']:.2f}x",
              f"- projection, {p['nodes']} nodes x {p['cores_per_node']} cores = {p['actors']} "
              f"actors, each with a core: {p['per_actor_images_per_cpu_s']} images per "
              f"CPU-second (1-actor run, Ray's processes included) x CPU efficiency at 2 actors "
              f"{p['efficiency']:.2f} = {p['actor_bound_images_per_s']:.0f} images/s from the "
              f"actors; one driver at {p['driver_ms_per_image']:.2f} CPU ms per image allows "
              f"{p['driver_bound_images_per_s']:.0f} images/s; so **{p['images_per_s']:.0f} "
              f"images/s**, {p['hours_per_million_images']:.2f} h per million images",
              f"- method {summary['method']}, {summary['images']} images of celeba-first10k, "
              f"measured {summary['date']} on {os.cpu_count()} cores"]
    return "\n".join(lines)


def write_doc(table: str) -> None:
    if not DOC.is_file():
        return
    text = DOC.read_text()
    if BEGIN in text and END in text:
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        DOC.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--method", default="mosaic")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--cores-per-node", type=int, default=16)
    args = parser.parse_args()
    if not CELEBA.is_dir():
        raise SystemExit(f"needs {CELEBA}")

    import ray

    work = Path(tempfile.mkdtemp(prefix="facedeid-ray-scaling-"))
    try:
        inputs = work / "celeba"
        inputs.mkdir()
        for source in sorted(CELEBA.iterdir())[:args.images]:
            shutil.copy(source, inputs / source.name)
        count = len(list(inputs.iterdir()))
        common = ["anonymize", str(inputs), "--method", args.method, "-q"]
        rows = [timed_run("local engine", common + ["-o", str(work / "local")], count)]
        # one Ray for both runs, as a cluster would be: the engine uses the session it finds
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                 object_store_memory=300_000_000)
        try:
            for actors in (1, 2):
                rows.append(timed_run(
                    f"ray, {actors} actor{'s' * (actors > 1)}",
                    common + ["-o", str(work / f"ray{actors}"), "--engine", "ray",
                              "--num-actors", str(actors)], count))
        finally:
            ray.shutdown()
        identical = all((work / "local" / "celeba" / name.name).read_bytes()
                        == (work / f"ray{actors}" / "celeba" / name.name).read_bytes()
                        for name in sorted(inputs.iterdir())[:200] for actors in (1, 2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    local, one, two = (row["images_per_s"] for row in rows)
    summary = {"method": args.method, "images": count, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                            time.gmtime()),
               "overhead_1_actor_pct": round(100 * (local / one - 1), 1),
               "cpu_overhead_1_actor_pct": round(
                   100 * (rows[1]["cpu_s"] / rows[0]["cpu_s"] - 1), 1),
               "scaling_2_actors": round(two / one, 3),
               "speedup_vs_local_2_actors": round(two / local, 3),
               "outputs_identical_first_200": identical,
               "projection": projection(rows, args.nodes, args.cores_per_node),
               "runs": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(rows, summary)
    write_doc(table)
    print(table)


if __name__ == "__main__":
    main()
