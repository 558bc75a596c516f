"""Load, then serve with uvicorn: everything is loaded before the port is bound, so a bad index or model is a
clean error at start, not a server that answers 500s."""

from __future__ import annotations

import logging
import os
import socket

from .app import create_app
from .metrics import Metrics
from .registry import Services, load_services
from .settings import ServeSettings

log = logging.getLogger(__name__)


def build(settings: ServeSettings) -> tuple[object, Services]:
    """The app and what it serves, loaded (the model workers start with the app)."""
    metrics = Metrics()
    services = load_services(settings, metrics)
    return create_app(services, settings, metrics), services


def uvicorn_server(app, settings: ServeSettings, log_level: str = "warning"):
    """A uvicorn server that, on SIGTERM or Ctrl-C, stops accepting and finishes the requests in flight
    (up to ``settings.graceful_seconds``) before the model workers stop."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.graceful_seconds,
        lifespan="on",
    )
    return uvicorn.Server(config)


_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Keep glibc to ``arenas`` malloc arenas, set before the worker threads start.

    glibc gives each thread that allocates under contention an arena of its own (up to 8 per core) and rarely
    returns their memory; a server's request threads then grow the process for thousands of requests (+82 MB of
    private memory over a 10,000-request soak with the default, about flat with two arenas). No-op elsewhere.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        log.debug("mallopt is not available here (not glibc); malloc arenas left as they are")


# Entries each of oneDNN's two primitive caches keeps (oneDNN's own and PyTorch's ideep layer; 1,024 each by
# default). A primitive is compiled for one input shape, and a server's batches come in hundreds of token
# counts, so the default caches kept growing private memory for thousands of requests (+255 MB of live heap
# after 4,000 soak requests, still climbing; flat at 16 entries). A variable already set wins.
ONEDNN_CACHE_ENTRIES = "16"


def _bound_onednn_caches(entries: str = ONEDNN_CACHE_ENTRIES) -> None:
    """Cap oneDNN's primitive caches; read when the first primitive is made, so set before the model loads."""
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, entries)


def serve(
    settings: ServeSettings, *, log_level: str = "warning", sock: socket.socket | None = None, on_ready=None
) -> None:
    """Load everything ``settings`` names and serve until SIGTERM/SIGINT.

    Args:
        sock: an already bound socket (tests bind port 0 to get a free port without a race).
        on_ready: called with the Services once loaded, before serving (the CLI prints what is served).
    """
    _limit_malloc_arenas()
    _bound_onednn_caches()
    app, services = build(settings)
    if on_ready is not None:
        on_ready(services)
    server = uvicorn_server(app, settings, log_level)
    server.run(sockets=[sock] if sock is not None else None)
