"""Shared fixtures. Data-dependent tests skip with a reason when ../shared is absent."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"

requires_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"needs the shared datasets at {SHARED_DATA} (absent on a user's machine)")


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; skips the calling test when it does not exist."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared datasets are absent)")
    return path


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real portrait that ships with scikit-image: (512, 512, 3) uint8 RGB, one face."""
    from skimage import data
    return data.astronaut()


@pytest.fixture(scope="session")
def centerface():
    from facedeid.detection import create_detector
    return create_detector("centerface")


@pytest.fixture(scope="session")
def astronaut_face(astronaut, centerface):
    faces = centerface.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


@contextmanager
def torch_threads(count: int):
    """Run a block with ``count`` torch threads, then restore the previous setting."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small networks on a shared 2-core box: one thread avoids oversubscription stalls."""
    with torch_threads(1):
        yield


@pytest.fixture
def failing_method():
    """Name of a registered method that blanks every face (a perfect de-identification) but
    raises on every second one: the evaluator must count those as unprotected, not drop them."""
    from facedeid.methods.base import DeidMethod
    from facedeid.methods.registry import _REGISTRY, register

    class FailsEveryOther(DeidMethod):
        name = "test-fails-every-other"
        summary = "raises on every second face (tests only)"
        calls = 0

        def apply(self, crop, context):
            type(self).calls += 1
            if type(self).calls % 2 == 0:
                raise RuntimeError("deliberate failure")
            return np.zeros_like(crop.pixels)

    register(FailsEveryOther)
    yield FailsEveryOther.name
    _REGISTRY.pop(FailsEveryOther.name, None)


@pytest.fixture(autouse=True, scope="session")
def password_for_the_password_method():
    """The password method reads its password from the environment when no terminal asks for
    it; suites that build every registered method need one. Tests of the no-password path
    remove it with monkeypatch."""
    import os
    previous = os.environ.get("FACEDEID_PASSWORD")
    os.environ["FACEDEID_PASSWORD"] = "test suite password"
    yield
    if previous is None:
        os.environ.pop("FACEDEID_PASSWORD", None)
    else:
        os.environ["FACEDEID_PASSWORD"] = previous
