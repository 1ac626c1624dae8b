"""Face detection and landmarks: the first stage of detect → align → de-identify → paste back.

Detectors are reached by name so the CLI, the evaluator and the video pipeline share them::

    detector = create_detector("centerface", score_threshold=0.5)
    faces = detector.detect(rgb_image)
"""
from __future__ import annotations

from .base import LANDMARK_NAMES, Face, FaceDetector, clip_box, non_max_suppression


def _centerface(**kwargs):
    from .centerface import CenterFaceDetector
    return CenterFaceDetector(**kwargs)


def _dlib_hog(**kwargs):
    from .dlib_models import DlibHogDetector
    return DlibHogDetector(**kwargs)


def _dlib_cnn(**kwargs):
    from .dlib_models import DlibCnnDetector
    return DlibCnnDetector(**kwargs)


def _haar(**kwargs):
    from .haar import HaarDetector
    return HaarDetector(**kwargs)


DETECTORS = {
    "centerface": (_centerface, "CenterFace ONNX (default; fast, gives 5 landmarks)"),
    "dlib-hog": (_dlib_hog, "dlib HOG + SVM (frontal faces; landmarks from dlib)"),
    "dlib-cnn": (_dlib_cnn, "dlib MMOD CNN (accurate, slow on CPU; a reference detector)"),
    "haar": (_haar, "OpenCV Haar cascade (the QM-VAE paper's detector)"),
}


def create_detector(name: str = "centerface", **kwargs) -> FaceDetector:
    """Build a detector by name; keyword arguments go to its constructor."""
    try:
        factory = DETECTORS[name][0]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}") from None
    return factory(**kwargs)


__all__ = ["Face", "FaceDetector", "LANDMARK_NAMES", "DETECTORS", "create_detector", "clip_box",
           "non_max_suppression"]
