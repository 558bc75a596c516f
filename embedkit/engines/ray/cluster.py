"""Joining or starting the Ray instance of a run, and sizing the model actors' pool to the cluster."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...errors import ConfigError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
INSTALL_HINT = "pip install 'embedkit[ray]'"

Workers = int | tuple[int, int] | None


def import_ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra, not only the core)
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT} ({exc})") from exc
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes: ``ray.init`` retries an unreachable address for a long time."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT, 'auto' or 'local'")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; is `ray start --head` running "
            "there, and is the port open from this machine?"
        ) from exc


@contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Use the Ray instance already initialised in this process, else connect/start one for the run.

    ``address`` None starts a local instance (or joins ``$RAY_ADDRESS``); ``auto`` joins the cluster this
    machine is part of; ``HOST:PORT`` / ``ray://HOST:PORT`` joins that head node. An instance this function
    started or joined is shut down again at the end.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConfigError(f"cannot connect to Ray at {address or '$RAY_ADDRESS'}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _pool(ray, workers: Workers, gpus_per_worker: float, cpus_per_worker: float) -> Any:
    """The actor pool for ``map_batches``: ``workers``, else as many actors as the cluster has room for now."""
    resources = ray.cluster_resources()
    if gpus_per_worker:
        room = int(resources.get("GPU", 0) // gpus_per_worker)
        if room == 0 and workers is None:
            raise ConfigError(
                f"--gpus-per-worker {gpus_per_worker} but the Ray cluster has no GPU ({resources.get('GPU', 0)})"
            )
    else:
        room = int(resources.get("CPU", 0) // cpus_per_worker)
    if workers is None:
        workers = max(1, room)
    elif (workers[0] if isinstance(workers, tuple) else workers) > room:
        log.warning("%s workers asked for but the cluster has room for %d now; Ray waits for room", workers, room)
    if isinstance(workers, tuple):
        return ray.data.ActorPoolStrategy(min_size=workers[0], max_size=workers[1])
    return ray.data.ActorPoolStrategy(size=workers)


__all__ = ["CONNECT_TIMEOUT_S", "INSTALL_HINT", "Workers", "import_ray", "ray_session"]
