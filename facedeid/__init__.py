"""facedeid — remove identity from faces in images and video, and measure what survives.

Python API::

    import facedeid
    out = facedeid.anonymize(rgb_array, method="mosaic", block_size=12)

The pipeline is detect → align → de-identify → paste back (:mod:`facedeid.pipeline`);
methods are registered by name (:mod:`facedeid.methods`); detectors live in
:mod:`facedeid.detection`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__version__ = "0.1.0"


@lru_cache(maxsize=8)
def _cached_anonymizer(method: str, params: tuple, detector: str, no_face: str | None, seed,
                       expect_faces: bool):
    from .pipeline import Anonymizer
    return Anonymizer(method, dict(params), detector=detector, no_face=no_face, seed=seed,
                      expect_faces=expect_faces)


def anonymize(image: np.ndarray | str, method: str = "mosaic", *, detector: str = "centerface",
              no_face: str | None = None, expect_faces: bool = False, seed: int | None = None,
              **params: Any) -> np.ndarray:
    """De-identify every face in ``image`` and return the new ``(H, W, 3) uint8`` RGB array.

    Args:
        image: RGB array, or a path to an image file (EXIF orientation honoured).
        method: registered method name (see :func:`list_methods`).
        detector: detector name.
        no_face: what to return when no face is found (after the second-chance detectors):
            ``"keep"`` (the image; the default), ``"obfuscate"`` (the default with
            ``expect_faces``).
        expect_faces: the image is known to show a face (a face dataset).
        **params: method parameters, e.g. ``block_size=12`` for mosaic.

    Models are loaded once per distinct configuration and reused.
    """
    if not isinstance(image, np.ndarray):
        from .io.images import read_image
        image = read_image(image).rgb
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
    anonymizer = _cached_anonymizer(method, frozen, detector, no_face, seed, expect_faces)
    return anonymizer.anonymize(image).image


def list_methods() -> dict[str, str]:
    """``{name: one-line summary}`` of every registered method."""
    from .methods import available_methods
    return {name: cls.summary for name, cls in available_methods().items()}


__all__ = ["anonymize", "list_methods", "__version__"]
