"""Exceptions with messages a user can act on."""


class FaceDeidError(Exception):
    """Base class for every error facedeid raises on purpose."""


class MissingWeightsError(FaceDeidError):
    """A weight file that ships inside a registry package is missing or corrupt."""


class InvalidInputError(FaceDeidError):
    """An input file or array that cannot be processed (corrupt, empty, too large, ...)."""


class UnknownMethodError(FaceDeidError):
    """No de-identification method is registered under the requested name."""


class InvalidParameterError(FaceDeidError):
    """A method or command parameter is out of range or of the wrong type."""
