"""One registry pattern (methods, detectors, recognizers, services) and one "name:k=v" parser."""
from __future__ import annotations

import pytest

from facedeid.detection import DETECTORS, create_detector
from facedeid.errors import FaceDeidError, InvalidParameterError, UnknownMethodError, \
    UnknownNameError
from facedeid.evaluation.recognizers import RECOGNIZERS, create_recognizer
from facedeid.evaluation.runner import MethodSpec
from facedeid.evaluation.services import SERVICES, create_service
from facedeid.methods import available_methods, create_method
from facedeid.methods.registry import _REGISTRY as METHODS
from facedeid.methods.registry import format_spec, parse_params, parse_spec
from facedeid.registry import Registry

FACTORIES = {"method": (create_method, METHODS), "detector": (create_detector, DETECTORS),
             "recognizer": (create_recognizer, RECOGNIZERS), "service": (create_service, SERVICES)}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_an_unknown_name_raises_the_same_error_listing_the_choices(kind):
    create, registry = FACTORIES[kind]
    with pytest.raises(UnknownNameError) as caught:
        create("no-such-thing")
    message = str(caught.value)
    assert f"unknown {kind} 'no-such-thing'" in message
    assert len(registry) >= 3 and all(name in message for name in registry)
    assert isinstance(caught.value, FaceDeidError) and isinstance(caught.value, ValueError)


def test_methods_keep_their_own_error_subclass_and_api():
    with pytest.raises(UnknownMethodError, match="facedeid methods"):
        create_method("mosiac")
    assert issubclass(UnknownMethodError, UnknownNameError)
    assert available_methods()["mosaic"].name == "mosaic"
    assert create_method("mosaic", block_size="12").config["block_size"] == 12


def test_registries_read_as_name_mappings():
    assert list(DETECTORS)[0] == "centerface"  # insertion order: the CLI's default comes first
    assert {"expression", "attributes", "detection", "age_gender"} == set(SERVICES)
    assert "dlib" in RECOGNIZERS and "nope" not in RECOGNIZERS
    assert SERVICES.describe()["expression"].startswith("FER2013")
    assert SERVICES.names() == sorted(SERVICES)


def test_registry_register_create_refuse_duplicates_and_unregister():
    shapes: Registry[tuple] = Registry("shape", hint="see the docs")
    shapes.register("square", lambda side=1: ("square", side), "four equal sides")
    assert shapes.create("square", side=3) == ("square", 3)
    with pytest.raises(ValueError, match="already registered"):
        shapes.register("square", lambda: ("other",))
    with pytest.raises(UnknownNameError, match=r"unknown shape 'circle'. Available: square "
                                               r"\(see the docs\)"):
        shapes.create("circle")
    assert shapes.unregister("square").description == "four equal sides"
    with pytest.raises(UnknownNameError, match=r"\(none registered\)"):
        shapes.entry("square")


def test_parse_spec_and_params():
    assert parse_spec("blur:kernel_size=31,sigma=2") == ("blur", {"kernel_size": "31",
                                                                  "sigma": "2"})
    assert parse_spec(" mosaic ") == ("mosaic", {})
    assert parse_spec("mosaic:") == ("mosaic", {})
    assert parse_params(["k=v", " a = b "]) == {"k": "v", "a": "b"}
    assert format_spec("blur", {"sigma": 2}) == "blur:sigma=2" and format_spec("blur") == "blur"
    for bad in (":k=v", "blur:kernel_size", "blur:=3"):
        with pytest.raises(InvalidParameterError):
            parse_spec(bad)
    with pytest.raises(InvalidParameterError, match="--param expects key=value"):
        parse_params(["novalue"])


def test_evaluator_specs_and_cli_params_use_the_same_parser():
    from facedeid.cli.common import parse_params as cli_parse_params

    assert cli_parse_params is parse_params
    spec = MethodSpec.parse("laplace:lam=0.2,label=paper,mu=0")
    assert (spec.method, spec.params, spec.label) == ("laplace", (("lam", "0.2"), ("mu", "0")),
                                                      "paper")
    with pytest.raises(InvalidParameterError):
        MethodSpec.parse("blur:kernel_size")
