"""The Ray engine: the model work of the embed stage spread over the actors of a Ray cluster (``--engine ray``).

How it runs:

1. The one embed driver (``embedkit.embed.embed``) reads the input with embedkit's own ``Source`` and cuts it into
   parts of ``part_rows`` rows, exactly as for the local engine; only each part's texts travel to the cluster.
   Ray's ``read_csv``/``read_json`` would stop at the first malformed line and ``read_parquet`` numbers no rows,
   so they could keep neither embedkit's bad-row contract (a malformed row becomes an output row with a status)
   nor row-number ids; reading text is also a small fraction of the work next to the model.
2. One pool of :class:`EmbedWorker` actors runs for the whole job: each loads the model once and turns the texts
   of the parts it is handed into vectors with the same ``Extractor`` as the local engine (batching, pooling and
   row statuses have a single implementation). The driver keeps at most ``IN_FLIGHT_PER_WORKER`` parts per actor
   handed out, so it reads the input only as fast as the actors work: its memory is bounded by those parts,
   however large the dataset. Actors the cluster has no room for yet join the pool when they start.
3. Results stream back as they finish, in any order; the driver builds each part's rows and commits it under its
   input position (``OUT.parquet.partial/part-000007.parquet``: deterministic names), then merges them in input
   order into the one ``OUT.parquet``, with the same metadata as the local engine. Writing on the driver needs no
   filesystem shared with the workers.

Failures: an actor that dies (node lost, killed for memory) is restarted and its part retried a few times
(``MAX_RESTARTS``, ``MAX_TASK_RETRIES``); an error raised by embedkit code is not retried, since it would only
happen again, and reaches the driver typed. Committed parts survive a failed run, and ``resume=True``
(``--resume``) sends only the missing parts to the cluster.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ExtractConfig
from ..errors import ConfigError, EmbedkitError
from ..spec import InputSpec, Runtime
from . import Engine, Part

if TYPE_CHECKING:
    from ..embed import EmbedSummary
    from ..extract import EncodeResult, Extractor
    from ..extract.extractor import ProgressFn

log = logging.getLogger(__name__)

# Rows per part (one Ray task, one committed file). Smaller than the local engine's 4,096 so that inputs
# of a few thousand rows still reach several workers and a failure loses little; on a GPU worker 1,024
# short texts still fill several token-budget batches.
RAY_PART_ROWS = 1024
# An actor that dies (not an exception: a lost node or an OOM kill) is restarted this many times, and the
# part it held is retried this many times, before the run fails. Ray's default for a restartable actor's tasks
# is to retry forever, which turns a part that always kills its worker into a run that never ends.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
# Parts handed out per actor at a time: one it works on and one waiting, so an actor never idles while the
# driver reads the next part, and the driver holds no more text than twice the pool's width in parts.
IN_FLIGHT_PER_WORKER = 2
CONNECT_TIMEOUT_S = 5.0
INSTALL_HINT = "pip install 'embedkit[ray]'"


def import_ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra, not only the core)
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT} ({exc})") from exc
    return ray


class EmbedWorker:
    """One model actor: loads an Extractor once, then embeds the texts of every part it is handed.

    Args:
        config: the resolved extraction settings (as a dict, so the actor rebuilds the same ExtractConfig).
        device, batch_tokens, threads: as for ``Extractor``.
    """

    def __init__(self, config: dict[str, Any], device: str, batch_tokens: int | None, threads: int | None) -> None:
        from transformers.utils import logging as hf_logging

        from ..extract import Extractor

        hf_logging.disable_progress_bar()  # one bar per actor on the driver's terminal helps nobody
        self.extractor, self.error = None, None
        try:
            self.extractor = Extractor(
                ExtractConfig.from_dict(config), device=device, batch_tokens=batch_tokens, threads=threads
            )
        except EmbedkitError as exc:
            # Sent to the driver with the first part instead (e.g. the model is missing on this node): an actor
            # that dies in __init__ is restarted again and again, and Ray's wrappers lose the typed error.
            self.error = exc

    def ready(self) -> bool:
        """Returns once the model is loaded (or failed to load): the actor can take parts."""
        return self.error is None

    def encode(self, index: int, texts: list[object]) -> tuple[int, EncodeResult | EmbedkitError]:
        """``(index, result)``, or ``(index, error)`` for an embedkit error, returned rather than raised (typed)."""
        if self.error is not None:
            return index, self.error
        assert self.extractor is not None
        try:
            return index, self.extractor.encode(texts)
        except EmbedkitError as exc:
            return index, exc


def unwrap(index: int, value: EncodeResult | EmbedkitError) -> tuple[int, EncodeResult]:
    """A worker's answer as the driver's result, or its embedkit error raised here with its own type."""
    if isinstance(value, EmbedkitError):
        raise type(value)(f"on a Ray worker: {value}")
    return index, value


# ---------------------------------------------------------------------------------------------- cluster


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
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConfigError(f"cannot connect to Ray at {address or '$RAY_ADDRESS'}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _pool_size(ray, workers: int | None, gpus_per_worker: float, cpus_per_worker: float) -> int:
    """Actors to start: ``workers``, else as many as the cluster has room for now (at least one).

    Actors without room yet wait to be placed and join the pool when they are (``stream``).
    """
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
        return max(1, room)
    if workers > room:
        log.warning(
            "%d workers asked for but the cluster has room for %d now; the others join as room appears", workers, room
        )
    return workers


# ---------------------------------------------------------------------------------------------- engine


class RayEngine(Engine):
    """Embeds parts on a pool of model actors that lives for the whole run; see the module's description.

    Args:
        address: Ray cluster to join (None: a local instance, or ``$RAY_ADDRESS``; ``auto``; ``HOST:PORT``).
        workers: model actors to run [default: as many as the cluster has room for].
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU); 0 runs on CPUs.
        cpus_per_worker: CPUs each actor reserves; also its torch threads unless the runtime names ``threads``.
    """

    ordered = False  # parts finish in any order
    fingerprint = {"engine": "ray"}  # its parts are numbered apart: the local engine cannot continue them

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise ConfigError("--gpus-per-worker must be >= 0 and cpus per worker > 0")
        self.address, self.workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.config: ExtractConfig | None = None
        self.runtime = Runtime()

    @property
    def default_part_rows(self) -> int:  # type: ignore[override]  # read late: tests shrink RAY_PART_ROWS
        return RAY_PART_ROWS

    def check(self, runtime: Runtime) -> None:
        if self.gpus_per_worker and runtime.device == "cpu":
            raise ConfigError("--gpus-per-worker asks for GPUs but --device is cpu; use --device auto or cuda")
        if runtime.device == "cuda" and not self.gpus_per_worker:
            # Ray hides every GPU from an actor that reserves none, so the workers could never see one.
            raise ConfigError("--device cuda with --engine ray needs --gpus-per-worker (e.g. 1)")
        import_ray()  # before any work: a missing extra is the first thing to say

    def load(self, config: ExtractConfig | None, runtime: Runtime) -> Extractor:
        """Load the model on the driver, on CPU, once: it checks the settings with embedkit's own errors before
        any actor starts and resolves them (the actors get the resolved config). The driver drops it at once."""
        from ..extract import Extractor

        probe = Extractor(config, device="cpu", batch_tokens=runtime.batch_tokens, threads=runtime.threads)
        self.config, self.runtime = probe.config, runtime
        return probe

    def encode(
        self, parts: Iterable[Part], progress: ProgressFn | None = None
    ) -> Generator[tuple[int, EncodeResult], None, None]:
        assert self.config is not None, "load() first"
        runtime, gpus = self.runtime, self.gpus_per_worker
        threads = runtime.threads or (max(1, int(self.cpus_per_worker)) if not gpus else None)
        with ray_session(self.address) as ray:
            size = _pool_size(ray, self.workers, gpus, self.cpus_per_worker)
            actor = ray.remote(EmbedWorker).options(
                num_cpus=self.cpus_per_worker,
                num_gpus=gpus or None,
                max_restarts=MAX_RESTARTS,
                max_task_retries=MAX_TASK_RETRIES,
            )
            args = (self.config.to_dict(), runtime.device, runtime.batch_tokens, threads)
            actors = [actor.remote(*args) for _ in range(size)]
            try:
                for index, value in stream(ray, actors, parts, IN_FLIGHT_PER_WORKER * size):
                    index, result = unwrap(index, value)
                    if progress is not None:
                        progress(int(result.valid.sum()), int(result.n_tokens[result.valid].sum()))
                    yield index, result
            finally:
                for handle in actors:
                    ray.kill(handle)


def stream(ray, actors: list[Any], parts: Iterable[Part], limit: int) -> Iterator[tuple[int, Any]]:
    """Hand ``parts`` to ``actors`` (``ready()`` and ``encode(index, texts)``), at most ``limit`` at a time.

    Yields the actors' answers as they finish. ``parts`` is read only as answers come back, so the caller's
    memory holds ``limit`` parts at most. Actors join the pool as they become ready (their model loaded): on a
    cluster short of room, the run starts with the first and grows as the others are placed.
    """
    from ray.util import ActorPool

    waiting = {handle.ready.remote(): handle for handle in actors}
    pool = ActorPool([])

    def admit(timeout: float | None) -> None:
        ready, _ = ray.wait(list(waiting), num_returns=1 if timeout is None else len(waiting), timeout=timeout)
        for ref in ready:
            pool.push(waiting.pop(ref))

    admit(None)  # the first actor with its model loaded
    in_flight = 0
    for index, texts in parts:
        pool.submit(lambda handle, item: handle.encode.remote(*item), (index, texts))
        in_flight += 1
        while in_flight >= limit:
            yield pool.get_next_unordered()
            in_flight -= 1
            if waiting:
                admit(0)
    while pool.has_next():
        yield pool.get_next_unordered()


def embed_file_ray(
    input: str | Path,
    output: str | Path,
    config: ExtractConfig | None = None,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    keep: tuple[str, ...] | list[str] = (),
    keep_text: bool = True,
    fmt: str | None = None,
    device: str = "auto",
    batch_tokens: int | None = None,
    threads: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    wait: bool = False,
    strict: bool = False,
    progress: bool = True,
    part_rows: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
) -> EmbedSummary:
    """``embed_file`` on a Ray cluster: same arguments, same output file, plus where and how wide to run.

    Args:
        address, workers, gpus_per_worker, cpus_per_worker: as for :class:`RayEngine`.
        part_rows: rows per part (task and committed file) [default: ``RAY_PART_ROWS``].

    Raises:
        ConfigError: Ray missing, cluster unreachable, or contradictory options.
        InputError, ModelLoadError, OutputError, IncompatibleError: as ``embed_file``.
    """
    from ..embed import embed

    return embed(
        InputSpec(input, fmt, text_column, id_column, tuple(keep), keep_text),
        output,
        config,
        Runtime(device=device, batch_tokens=batch_tokens, threads=threads, progress=progress),
        engine=RayEngine(address, workers, gpus_per_worker, cpus_per_worker),
        resume=resume,
        overwrite=overwrite,
        wait=wait,
        strict=strict,
        part_rows=part_rows,
    )


__all__ = [
    "EmbedWorker",
    "IN_FLIGHT_PER_WORKER",
    "MAX_RESTARTS",
    "MAX_TASK_RETRIES",
    "RAY_PART_ROWS",
    "RayEngine",
    "embed_file_ray",
    "import_ray",
    "ray_session",
]
