"""Service evaluators: downstream tasks whose answers a de-identification should preserve.

    service = create_service("expression", crop="haar")
    kept = service.compare(service.predict(originals, boxes), service.predict(anonymized, boxes))

Each evaluator is built once (it loads its model once) and reused over a dataset. Services are
reached by name through a :class:`facedeid.registry.Registry`, like methods, detectors and
recognizers; each evaluator's module (and its model) is imported only when it is built.
"""
from __future__ import annotations

from ...registry import Registry
from .base import ServiceEvaluator, ServiceOutput


def _expression(**kwargs) -> ServiceEvaluator:
    from .expression import ExpressionService
    return ExpressionService(**kwargs)


def _attributes(**kwargs) -> ServiceEvaluator:
    from .attributes import AttributeService
    return AttributeService(**kwargs)


def _detection(**kwargs) -> ServiceEvaluator:
    from .detection import DetectionService
    return DetectionService(**kwargs)


def _age_gender(**kwargs) -> ServiceEvaluator:
    from .age_gender import AgeGenderService
    return AgeGenderService(**kwargs)


SERVICES: Registry[ServiceEvaluator] = Registry("service")
SERVICES.register("expression", _expression,
                  "FER2013 mini-Xception expression (QM-VAE Eq. 4); service loss rate of Eq. 8")
SERVICES.register("attributes", _attributes,
                  "CelebA multi-task attribute classifier (EEAE); per-attribute agreement")
SERVICES.register("detection", _detection,
                  "independent face detector (dlib HOG by default); detection rate at IoU >= 0.3")
SERVICES.register("age_gender", _age_gender,
                  "faceres gender and age heads; gender agreement, mean absolute age difference")


def create_service(name: str, **kwargs) -> ServiceEvaluator:
    """Build the evaluator ``name`` (one of :data:`SERVICES`); kwargs go to its constructor.

    Raises:
        UnknownNameError: no service is registered as ``name`` (the message lists them).
    """
    return SERVICES.create(name, **kwargs)


__all__ = ["SERVICES", "ServiceEvaluator", "ServiceOutput", "create_service"]
