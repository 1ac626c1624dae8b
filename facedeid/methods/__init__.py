"""De-identification methods, each registered by name.

Importing this package registers the built-in methods; learned methods register the same
way from their own modules. Use :func:`create_method` to build one::

    from facedeid.methods import create_method
    mosaic = create_method("mosaic", block_size=12)
"""
from __future__ import annotations

from .base import DeidMethod, FaceContext, Param
from .registry import available_methods, create_method, method_class, register

# Built-in methods register themselves on import (one module per method family).
from . import classic, cartoon  # noqa: E402,F401
from . import ksame  # noqa: E402,F401
from . import dp_obfuscation  # noqa: E402,F401
from . import identity_cloak  # noqa: E402,F401
from . import qmvae  # noqa: E402,F401
from . import private_encoder  # noqa: E402,F401
from . import ksame_net  # noqa: E402,F401
from . import ksame_m  # noqa: E402,F401
from . import eeae  # noqa: E402,F401
from . import identity_edit  # noqa: E402,F401

__all__ = ["DeidMethod", "FaceContext", "Param", "available_methods", "create_method",
           "method_class", "register"]
