"""Loopback load test of ``facedeid serve`` (issue 17).

    python benchmarks/service_load.py [--clients 4] [--requests 1000] [--seconds 240]
        [--workers 1] [--queue-size 8] [--overload-seconds 10]
        [--out benchmarks/results/service_load.json]

Starts the real service (``python -m facedeid serve``, uvicorn) on a free 127.0.0.1 port in a
subprocess, then:

0. warm-up: the same clients for ``--warm-up`` requests (100) with the video beside them.
1. **below the queue limit**: ``--clients`` concurrent clients (at most workers + queue size,
   so none is turned away) POST CelebA photos (celeba-id200, 178x218, method mosaic) to
   ``/anonymize`` until ``--requests`` have been answered or ``--seconds`` pass; meanwhile one
   real video (``two_faces_640x360.mp4``) goes through ``POST /jobs`` and is polled to the end.
   Reported: throughput, p50/p95 latency, errors (must be 0), the video job's time, and the
   server's RSS after the warm-up and after all requests (no growth expected: models are
   cached per worker, uploads deleted after each response).
2. **above it**: ``3 x (workers + queue size)`` clients for ``--overload-seconds``: every
   answer must be 200 or a clean 503 with Retry-After; anything else is an error.

The server's load average is recorded next to the timings: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PHOTOS = DATA / "celeba-id200" / "img_align_celeba"
VIDEO = DATA / "video" / "two_faces_640x360.mp4"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Load:
    """Clients posting photos in a loop; collects (status, seconds) per request."""

    def __init__(self, url: str, photos: list[bytes], clients: int, stop_after: int | None,
                 seconds: float, server_pid: int | None = None) -> None:
        self.url, self.photos, self.clients = url, photos, clients
        self.stop_after, self.seconds = stop_after, seconds
        self.server_pid = server_pid
        self.rss_every_100: list[float] = []  # the server's RSS (MiB) after each 100 answers
        self.results: list[tuple[int, float]] = []
        self.unexpected: list[str] = []
        self.lock = threading.Lock()
        self.issued = 0

    def _next(self) -> int | None:
        with self.lock:
            if self.stop_after is not None and self.issued >= self.stop_after:
                return None
            self.issued += 1
            return self.issued

    def _client(self, deadline: float) -> None:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < deadline:
                number = self._next()
                if number is None:
                    return
                photo = self.photos[number % len(self.photos)]
                started = time.perf_counter()
                try:
                    response = client.post(self.url + "/anonymize", data={"method": "mosaic"},
                                           files={"file": ("photo.jpg", photo, "image/jpeg")})
                    status = response.status_code
                    if status == 503 and not response.headers.get("retry-after"):
                        self.unexpected.append("503 without Retry-After")
                    if status not in (200, 503):
                        self.unexpected.append(f"{status}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    status = 0
                    self.unexpected.append(f"{type(error).__name__}: {error}")
                with self.lock:
                    self.results.append((status, time.perf_counter() - started))
                    if self.server_pid and len(self.results) % 100 == 0:
                        self.rss_every_100.append(round(rss_mb(self.server_pid), 1))

    def run(self) -> dict:
        deadline = time.monotonic() + self.seconds
        started = time.perf_counter()
        threads = [threading.Thread(target=self._client, args=(deadline,))
                   for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        ok = [seconds for status, seconds in self.results if status == 200]
        busy = sum(1 for status, _ in self.results if status == 503)
        return {"clients": self.clients, "requests": len(self.results), "ok": len(ok),
                "busy_503": busy, "errors": len(self.unexpected),
                "error_samples": self.unexpected[:5], "seconds": round(elapsed, 2),
                "throughput_ok_per_s": round(len(ok) / elapsed, 2) if elapsed else None,
                "latency_ok_p50_s": round(percentile(ok, 0.5), 3),
                "latency_ok_p95_s": round(percentile(ok, 0.95), 3),
                "latency_ok_mean_s": round(statistics.fmean(ok), 3) if ok else None,
                **({"rss_mb_every_100": self.rss_every_100} if self.server_pid else {})}


def video_job(url: str, path: Path, report: dict) -> None:
    """One video through /jobs, polled to the end (runs beside the image load)."""
    started = time.perf_counter()
    with httpx.Client(timeout=120) as client:
        response = client.post(url + "/jobs", data={"method": "mosaic"},
                               files={"file": (path.name, path.read_bytes(), "video/mp4")})
        if response.status_code != 202:
            report.update(error=f"{response.status_code}: {response.text[:200]}")
            return
        job_id = response.json()["id"]
        fractions = []
        while True:
            state = client.get(f"{url}/jobs/{job_id}").json()
            fractions.append(state["progress"]["fraction"])
            if state["state"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        result = client.get(f"{url}/jobs/{job_id}/result") if state["state"] == "done" else None
        client.delete(f"{url}/jobs/{job_id}")
    report.update(file=path.name, state=state["state"], error=state["error"],
                  seconds=round(time.perf_counter() - started, 2),
                  result_bytes=len(result.content) if result is not None else 0,
                  face_tracks=(state["results"] or [{}])[0].get("face_tracks"),
                  progress_updates_seen=len(set(fractions)))


def start_server(port: int, args) -> subprocess.Popen:
    command = [sys.executable, "-m", "facedeid", "serve", "--port", str(port),
               "--workers", str(args.workers), "--queue-size", str(args.queue_size),
               "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the service did not start within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--warm-up", type=int, default=100,
                        help="requests before the RSS baseline (default: 100)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "service_load.json"))
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        raise SystemExit(f"needs the CelebA photos at {PHOTOS}")
    capacity = args.workers + args.queue_size
    if args.clients > capacity:
        raise SystemExit(f"--clients must be <= workers + queue size ({capacity}) for the "
                         "below-the-limit phase")
    photos = [path.read_bytes() for path in sorted(PHOTOS.glob("*.jpg"))[:args.photos]]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(port, args)
    try:
        # Warm-up in the shape of the measured phase (same clients, the video beside them):
        # models load on the first request, thread-pool threads, their allocator arenas and
        # the video path's buffers on first use. RSS growth is measured from there.
        warm_video: dict = {}
        warm_video_thread = threading.Thread(target=video_job, args=(url, VIDEO, warm_video))
        if VIDEO.is_file():
            warm_video_thread.start()
        warm = Load(url, photos, args.clients, args.warm_up, args.seconds).run()
        if VIDEO.is_file():
            warm_video_thread.join()
        rss_before = rss_mb(server.pid)
        load_before = os.getloadavg()
        video: dict = {}
        video_thread = threading.Thread(target=video_job, args=(url, VIDEO, video))
        if VIDEO.is_file():
            video_thread.start()
        steady = Load(url, photos, args.clients, args.requests, args.seconds, server.pid).run()
        if VIDEO.is_file():
            video_thread.join()
        rss_after = rss_mb(server.pid)
        load_after = os.getloadavg()
        overload = Load(url, photos, 3 * capacity, None, args.overload_seconds).run()
        rss_end = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = {
        "command": "python benchmarks/service_load.py " + " ".join(sys.argv[1:]),
        "server": {"workers": args.workers, "queue_size": args.queue_size,
                   "capacity": capacity, "cpu_count": os.cpu_count()},
        "warm_up": {"images": warm, "video_job": warm_video},
        "below_queue_limit": steady, "video_job": video,
        "above_queue_limit": overload,
        "rss_mb": {"after_warm_up": round(rss_before, 1),
                   "after_requests": round(rss_after, 1),
                   "growth": round(rss_after - rss_before, 1),
                   "requests_between": steady["requests"] + (1 if video else 0),
                   "after_overload": round(rss_end, 1)},
        "load_average": {"before": [round(v, 2) for v in load_before],
                         "after": [round(v, 2) for v in load_after]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    failed = steady["errors"] or steady["busy_503"] or overload["errors"] or \
        video.get("state") not in (None, "done")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
