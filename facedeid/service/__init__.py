"""The web service of ``facedeid serve``: a FastAPI app over the same pipeline as the CLI.

Build it with :func:`create_app` (limits in :class:`ServiceSettings`) and run it under any ASGI
server; ``facedeid serve`` runs it under uvicorn. Layout: :mod:`.app` (endpoints),
:mod:`.uploads` (streaming, size cap, content sniffing), :mod:`.workers` (thread pool with a
bounded queue, models once per worker), :mod:`.processing` (the CLI's per-file functions),
:mod:`.jobs` (background jobs), :mod:`facedeid.methods.catalog` (``GET /methods``), ``static/`` (the page).
"""
from .settings import ServiceSettings, is_loopback


def create_app(settings: ServiceSettings | None = None):
    """The FastAPI application (imported lazily: FastAPI loads only when a service is built)."""
    from .app import create_app as build
    return build(settings)


__all__ = ["create_app", "ServiceSettings", "is_loopback"]
