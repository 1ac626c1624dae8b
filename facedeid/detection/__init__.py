"""Face detection and landmarks: the first stage of detect → align → de-identify → paste back.

Detectors are reached by name so the CLI, the evaluator and the video pipeline share them::

    detector = create_detector("centerface", score_threshold=0.5)
    faces = detector.detect(rgb_image)
"""
from __future__ import annotations

from .base import (LANDMARK_NAMES, Face, FaceDetector, clip_box, merge_faces,
                   non_max_suppression)
from ..registry import Registry


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


DETECTORS: Registry[FaceDetector] = Registry("detector")
DETECTORS.register("centerface", _centerface, "CenterFace ONNX (default; fast, gives 5 landmarks)")
DETECTORS.register("dlib-hog", _dlib_hog, "dlib HOG + SVM (frontal faces; landmarks from dlib)")
DETECTORS.register("dlib-cnn", _dlib_cnn,
                   "dlib MMOD CNN (accurate, slow on CPU; a reference detector)")
DETECTORS.register("haar", _haar, "OpenCV Haar cascade (the QM-VAE paper's detector)")


def create_detector(name: str = "centerface", **kwargs) -> FaceDetector:
    """Build a detector by name; keyword arguments go to its constructor.

    Raises:
        UnknownNameError: no detector is registered as ``name`` (the message lists them).
    """
    return DETECTORS.create(name, **kwargs)


def __getattr__(name: str):
    # The locator imports alignment helpers lazily; exposing it lazily keeps
    # `import facedeid.detection` light and free of import cycles.
    if name in ("FaceLocator", "locate_faces", "main_face"):
        from . import locate
        return getattr(locate, name)
    raise AttributeError(name)


__all__ = ["Face", "FaceDetector", "LANDMARK_NAMES", "DETECTORS", "create_detector", "clip_box",
           "merge_faces", "non_max_suppression", "FaceLocator", "locate_faces", "main_face"]
