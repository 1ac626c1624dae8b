"""Exceptions with messages a user can act on."""


class FaceDeidError(Exception):
    """Base class for every error facedeid raises on purpose."""


class MissingWeightsError(FaceDeidError):
    """A weight file that ships inside a registry package is missing or corrupt."""


class InvalidInputError(FaceDeidError):
    """An input file or array that cannot be processed (corrupt, empty, too large, ...)."""


class UnknownNameError(FaceDeidError, ValueError):
    """No method, detector, recognizer or service is registered under the requested name.

    Also a ``ValueError``: asking for an unknown name is a bad argument value.
    """


class UnknownMethodError(UnknownNameError):
    """No de-identification method is registered under the requested name."""


class InvalidParameterError(FaceDeidError, ValueError):
    """A method or command parameter is out of range or of the wrong type.

    Also a ``ValueError``, like :class:`UnknownNameError`: callers that catch bad argument
    values the standard way keep working.
    """
