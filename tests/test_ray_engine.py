"""``--engine ray`` on a real local Ray cluster: a head node and a second worker node, started by
``ray start`` for this module and stopped after it. The Ray engine must give the local engine's
results bit for bit, fail only the bad item, retry a killed worker's items, and refuse an
unreachable cluster before writing anything."""
from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facedeid.cli import main

from .conftest import SHARED_DATA

ray = pytest.importorskip("ray")
try:  # Ray with token authentication caches token and mode per process; without it: no-op
    from ray._private.authentication_test_utils import reset_auth_token_state
except ImportError:
    def reset_auth_token_state() -> None:
        pass

CELEBA = SHARED_DATA / "celeba-first10k" / "img_align_celeba"
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray(*arguments: str, env: dict) -> None:
    done = subprocess.run([str(RAY), *arguments], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"ray {' '.join(arguments)} failed:\n{done.stdout}\n{done.stderr}"


def _stop_processes_of(temp_dir: str) -> None:
    """Stop this cluster's processes, and only them, by pid: every process whose command line
    names ``temp_dir`` (GCS, raylets, monitors of both nodes) and their children (workers).
    ``ray stop`` would stop every Ray cluster of the machine's user."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            table[int(entry)] = (command, parent)
    ours = {pid for pid, (command, _) in table.items() if temp_dir.encode() in command}
    grew = True
    while grew:
        children = {pid for pid, (_, parent) in table.items() if parent in ours} - ours
        grew, ours = bool(children), ours | children
    ours -= {os.getpid(), os.getppid()}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in ours):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster_address():
    """``HOST:PORT`` of a two-node Ray cluster on 127.0.0.1 (one CPU per node)."""
    if not RAY.is_file():
        pytest.skip(f"no ray command beside {sys.executable}")
    # Ray's unix sockets live under --temp-dir; a pytest tmp_path is too long for them
    temp_dir = tempfile.mkdtemp(prefix="fdray-", dir="/tmp")
    port = _free_port()
    # Token authentication, as on a real cluster, with this cluster's own token: every node
    # and this test process (the driver) read it from the same file
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    saved = {name: os.environ.get(name) for name in auth}
    os.environ.update(auth)
    reset_auth_token_state()  # this process may have cached another token (~/.ray/auth_token)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    common = ["--num-cpus", "1", "--object-store-memory", "200000000", "--disable-usage-stats"]
    try:
        _ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--include-dashboard=false", "--temp-dir", temp_dir, *common, env=env)
        _ray("start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
             *common, env=env)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_auth_token_state()


def _celeba_folder(root: Path, count: int) -> Path:
    """``count`` CelebA photos and one corrupt JPEG in a fresh input folder."""
    if not CELEBA.is_dir():
        pytest.skip(f"needs {CELEBA} (the shared datasets are absent)")
    folder = root / "faces"
    folder.mkdir()
    for source in sorted(CELEBA.iterdir())[:count]:
        shutil.copy(source, folder / source.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def both_engines(cluster_address, tmp_path_factory):
    """The same 50 photos + 1 corrupt file through the local and the Ray engine (2 actors),
    with a stochastic method and a seed: ``{engine: (exit code, output folder, summary)}``."""
    root = tmp_path_factory.mktemp("engines")
    folder = _celeba_folder(root, 50)
    runs = {}
    for engine in ("local", "ray"):
        output, summary = root / f"out_{engine}", root / f"summary_{engine}.json"
        extra = ["--engine", "ray", "--address", cluster_address, "--num-actors", "2"] \
            if engine == "ray" else []
        code = main(["anonymize", str(folder), "-o", str(output), "--method", "laplace",
                     "--param", "lam=0.2", "--seed", "7", "--json", "--summary", str(summary),
                     "-q", *extra])
        runs[engine] = (code, output, json.loads(summary.read_text()))
    return runs


@pytest.mark.shared_data
def test_ray_writes_the_local_engines_outputs_bit_for_bit(both_engines):
    (local_code, local_out, _), (ray_code, ray_out, _) = both_engines["local"], both_engines["ray"]
    local, distributed = _files(local_out), _files(ray_out)
    images = [name for name in local if name.endswith(".jpg")]
    assert len(images) == 50 and sorted(distributed) == sorted(local)
    assert not [name for name in local_out.rglob(".*")]  # no temporary file left anywhere
    for name in images:
        assert distributed[name] == local[name], f"{name} differs between the engines"
    for name in (n for n in local if n.endswith(".json")):  # sidecars: only the folder differs
        ours, theirs = json.loads(local[name]), json.loads(distributed[name])
        assert Path(ours.pop("output")).name == Path(theirs.pop("output")).name
        assert ours == theirs and ours["faces"]


@pytest.mark.shared_data
def test_a_corrupt_file_fails_alone_with_the_same_summary_and_exit_code(both_engines):
    (local_code, _, local_summary), (ray_code, _, ray_summary) = \
        both_engines["local"], both_engines["ray"]
    assert local_code == ray_code == 1  # one failed file
    assert ray_summary["by_status"] == local_summary["by_status"]
    assert ray_summary["by_status"]["failed"] == 1
    assert sum(ray_summary["by_status"].values()) == 51
    assert [Path(f["source"]).name for f in ray_summary["failures"]] == ["broken.jpg"]
    assert ray_summary == local_summary


def test_an_unreachable_cluster_is_a_clear_error_and_nothing_is_written(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "grey.png")
    output = tmp_path / "out"
    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there
    code = main(["anonymize", str(folder), "-o", str(output), "--engine", "ray",
                 "--address", dead, "--summary", str(tmp_path / "summary.json"), "-q"])
    error = capsys.readouterr().err
    assert code == 2
    assert f"no Ray cluster answers at {dead}" in error and "Traceback" not in error
    assert not output.exists() and not (tmp_path / "summary.json").exists()


def test_the_engine_options_are_checked_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["anonymize", str(tmp_path), "-o", str(tmp_path / "out"), "--engine", "ray",
              "--num-actors", "0"])
    assert stop.value.code == 2 and "at least 1" in capsys.readouterr().err


# -- a worker killed in the middle of a batch ----------------------------------------------------
class CrashOnceAnonymizer:
    """Wraps an Anonymizer; the first call made while ``flag`` exists removes it and kills its
    process (only one process can remove the file, so exactly one worker dies)."""

    def __init__(self, anonymizer, flag: str):
        self._anonymizer, self._flag = anonymizer, flag

    def __getattr__(self, name):
        return getattr(self._anonymizer, name)

    def anonymize(self, image, faces=None):
        try:
            os.unlink(self._flag)
        except FileNotFoundError:
            return self._anonymizer.anonymize(image, faces)
        os._exit(17)


def crash_once_anonymizer(flag: str):
    from facedeid.pipeline import Anonymizer
    return CrashOnceAnonymizer(Anonymizer("mosaic", landmarks="box"), flag)


def test_a_killed_workers_items_are_retried(cluster_address, tmp_path):
    import ray.cloudpickle

    from facedeid.batch import JobSettings, plan_batch, run_jobs
    from facedeid.engines.ray_engine import ray_cluster, run_jobs_on_ray
    from facedeid.pipeline import Anonymizer

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):  # faceless images: no detector work, the kill is what is tested
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(folder / f"{index}.png")
    flag = tmp_path / "crash-once"
    flag.touch()
    plan = plan_batch([folder], tmp_path / "ray")
    # the workers cannot import this test module: send its crashing wrapper by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with ray_cluster(cluster_address):
            outcomes = dict(run_jobs_on_ray(
                plan.jobs, functools.partial(crash_once_anonymizer, str(flag)), JobSettings(),
                protected=plan.protected, num_actors=2, images_per_batch=2))
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert not flag.exists(), "no worker was killed: the test proved nothing"
    assert sorted(outcomes) == [0, 1, 2, 3]
    assert all(outcome.status == "kept" for outcome in outcomes.values())
    local_plan = plan_batch([folder], tmp_path / "local")
    list(run_jobs(local_plan.jobs, Anonymizer("mosaic", landmarks="box"), JobSettings(),
                  protected=local_plan.protected))
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


@pytest.mark.shared_data
def test_evaluate_on_ray_gives_the_local_figures(cluster_address, tmp_path):
    """The evaluator's method stage on the actors (probes and the parrot attacker's gallery,
    a stochastic method with a seed): results.json equal to the local run's but for timings."""
    if not (SHARED_DATA / "celeba-id200").is_dir():
        pytest.skip("needs the shared celeba-id200 dataset")
    results = {}
    for engine in ("local", "ray"):
        extra = ["--engine", "ray", "--address", cluster_address, "--num-actors", "2"] \
            if engine == "ray" else []
        code = main(["evaluate", "--method", "laplace", "--param", "lam=0.2", "--seed", "5",
                     "--dataset", "celeba-id200", "--limit", "8", "--services", "none",
                     "--recognizer", "dlib", "--no-cache", "--gallery-per-identity", "1", "-q",
                     "-o", str(tmp_path / engine), *extra])
        assert code == 0
        figures = json.loads((tmp_path / engine / "results.json").read_text())
        for key in ("timings", "config"):
            figures.pop(key)
        for row in figures["methods"]:
            row.pop("seconds"), row.pop("timings")
        results[engine] = figures
    assert results["ray"]["methods"][0]["outputs"] == 8
    assert results["ray"]["methods"][0]["parrot"]["gallery_own"] == 8
    assert results["ray"] == results["local"]
