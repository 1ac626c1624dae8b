"""Service evaluators: downstream tasks whose answers a de-identification should preserve.

    service = create_service("expression", crop="haar")
    kept = service.compare(service.predict(originals, boxes), service.predict(anonymized, boxes))

Each evaluator is built once (it loads its model once) and reused over a dataset.
"""
from __future__ import annotations

from .base import ServiceEvaluator, ServiceOutput

SERVICES: dict[str, str] = {
    "expression": "FER2013 mini-Xception expression (QM-VAE Eq. 4); service loss rate of Eq. 8",
    "attributes": "CelebA multi-task attribute classifier (EEAE); per-attribute agreement",
    "detection": "independent face detector (dlib HOG by default); detection rate at IoU >= 0.3",
}


def create_service(name: str, **kwargs) -> ServiceEvaluator:
    """Build the evaluator ``name`` (one of :data:`SERVICES`); kwargs go to its constructor."""
    if name == "expression":
        from .expression import ExpressionService
        return ExpressionService(**kwargs)
    if name == "attributes":
        from .attributes import AttributeService
        return AttributeService(**kwargs)
    if name == "detection":
        from .detection import DetectionService
        return DetectionService(**kwargs)
    raise ValueError(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}")


__all__ = ["SERVICES", "ServiceEvaluator", "ServiceOutput", "create_service"]
