"""The Ray Data engine: the embed stage spread over the actors of a Ray cluster (``--engine ray``).

How it runs:

1. The driver opens the input with embedkit's own ``Source`` and cuts it into parts of ``part_rows`` rows,
   exactly like the local engine. Each part travels to the cluster as one pickled ``Records`` item
   (``ray.data.from_items``), in waves of at most ``wave_parts`` parts: the driver streams the input and
   holds one wave of text at a time, however large the dataset. Ray's ``read_csv``/``read_json`` would stop at
   the first malformed line and ``read_parquet`` numbers no rows, so they could keep neither embedkit's
   bad-row contract (a malformed row becomes an output row with a status) nor row-number ids; reading text is
   also a small fraction of the work next to the model. The model work is what is spread out.
2. ``map_batches`` runs :class:`EmbedWorker`, a callable class that loads the model once per actor and
   calls ``embed.encode_records``, the same extractor and table builder as the local engine: batching,
   pooling, bad rows and the column contract have a single implementation.
3. Parts stream back to the driver as they finish, in any order; each is committed atomically under its
   input position (``OUT.parquet.partial/part-000007.parquet``: deterministic names) by ``PartWriter``,
   which finally merges them in input order into the one ``OUT.parquet`` with the same ``embedkit``
   schema metadata as the local engine. Writing on the driver needs no filesystem shared with the workers.

Failures: an actor that dies (node lost, killed for memory) is restarted and its part retried a few times
(``MAX_RESTARTS``, ``MAX_TASK_RETRIES``); an exception raised by embedkit code is not retried, since it
would only happen again. Committed parts survive a failed run, and ``resume=True`` (``--resume``) sends
only the missing parts to the cluster.
"""

from __future__ import annotations

import logging
import pickle
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import ExtractConfig
from ..embed import EmbedSummary, _progress_bar, _summarise, build_metadata, encode_records, fingerprint
from ..errors import ConfigError, EmbedkitError, InputError
from ..extract import Extractor
from ..extract.texts import EMBEDDED_STATUSES
from ..sources import Source
from ..store import PartWriter

log = logging.getLogger(__name__)

# Rows per part (one Ray task, one committed file). Smaller than the local engine's 4,096 so that inputs
# of a few thousand rows still reach several workers and a failure loses little; on a GPU worker 1,024
# short texts still fill several token-budget batches.
RAY_PART_ROWS = 1024
# An actor that dies (not an exception: a lost node or an OOM kill) is restarted this many times, and the
# part it held is retried this many times, before the run fails. Ray Data's default is to retry forever,
# which turns a part that always kills its worker into a run that never ends.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
# Parts handed to Ray per wave, per actor. ``from_items`` needs the items up front, so the driver reads the
# input in waves: its memory is bounded by one wave (parts x part_rows texts), not by the dataset. Each wave
# starts its actor pool afresh (one model load per actor); 8 parts of 1,024 rows per actor keep that load a
# small share of the wave's model work, and the last, partly idle moments of a wave short.
WAVE_PARTS_PER_WORKER = 8
CONNECT_TIMEOUT_S = 5.0
INSTALL_HINT = "pip install 'embedkit[ray]'"
# Carries each row's input position from the workers to the driver; dropped before writing.
ROW_COLUMN = "__embedkit_row"
# A block holding only this column carries an embedkit error raised on a worker, re-raised by the driver.
ERROR_COLUMN = "__embedkit_error"


def import_ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra, not only the core)
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT} ({exc})") from exc
    return ray


class EmbedWorker:
    """The ``map_batches`` callable: one Extractor per actor, reused for every part it is given.

    Args:
        config: the resolved extraction settings (as a dict, so the actor rebuilds the same ExtractConfig).
        device, batch_tokens, threads: as for ``Extractor``.
    """

    def __init__(self, config: dict[str, Any], device: str, batch_tokens: int | None, threads: int | None) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per actor on the driver's terminal helps nobody
        self.extractor, self.error = None, None
        try:
            self.extractor = Extractor(
                ExtractConfig.from_dict(config), device=device, batch_tokens=batch_tokens, threads=threads
            )
        except EmbedkitError as exc:
            # Sent to the driver as a block instead (e.g. the model is missing on this node): Ray Data restarts
            # an actor that dies in __init__ again and again, and its exception wrappers lose the typed error.
            self.error = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.error is not None:
            return pa.table({ERROR_COLUMN: [pickle.dumps(self.error)]})
        tables = []
        for blob in batch.column("records").to_pylist():
            records = pickle.loads(blob)
            table, _ = encode_records(records, self.extractor)
            tables.append(table.append_column(ROW_COLUMN, pa.array(records.row_numbers, type=pa.int64())))
        return pa.concat_tables(tables, promote_options="permissive")


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


def _pool_size(ray, workers: int | None, gpus_per_worker: float, cpus_per_worker: float) -> int | tuple[int, int]:
    """Actors to run: ``workers`` if the cluster has room now, else a pool that grows as room appears."""
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
            "%d workers asked for but the cluster has room for %d now; starting with 1 and growing", workers, room
        )
        return (1, workers)
    return workers


# ---------------------------------------------------------------------------------------------- driver


def _part_index(name: str) -> int:
    return int(name.removeprefix("part-").removesuffix(".parquet"))


def embed_file_ray(
    input: str | Path,
    output: str | Path,
    config: ExtractConfig | None = None,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    keep: tuple[str, ...] | list[str] = (),
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
        address: Ray cluster to join (None: a local instance, or ``$RAY_ADDRESS``; ``auto``; ``HOST:PORT``).
        workers: model actors to run [default: as many as the cluster has room for].
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU); 0 runs on CPUs.
        cpus_per_worker: CPUs each actor reserves; also its torch threads unless ``threads`` is given.
        part_rows: rows per part (task and committed file) [default: ``RAY_PART_ROWS``].

    Raises:
        ConfigError: Ray missing, cluster unreachable, or contradictory options.
        InputError, ModelLoadError, OutputError, IncompatibleError: as ``embed_file``.
    """
    started = time.perf_counter()
    part_rows = part_rows or RAY_PART_ROWS
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if gpus_per_worker < 0 or cpus_per_worker <= 0:
        raise ConfigError("--gpus-per-worker must be >= 0 and cpus per worker > 0")
    if gpus_per_worker and device == "cpu":
        raise ConfigError("--gpus-per-worker asks for GPUs but --device is cpu; use --device auto or cuda")
    if device == "cuda" and not gpus_per_worker:
        # Ray hides every GPU from an actor that reserves none, so the workers could never see one.
        raise ConfigError("--device cuda with --engine ray needs --gpus-per-worker (e.g. 1)")
    import_ray()  # before any work: a missing extra is the first thing to say
    source = Source(input, text_column=text_column, id_column=id_column, keep=keep, fmt=fmt)
    # The output's lock before the model load, as the local engine: a second writer stops at once (BusyError).
    with PartWriter(Path(output), wait=wait) as writer:
        # Loading the model here validates the settings with embedkit's own errors before any actor starts, and
        # gives the metadata (resolved config, model facts) that the output must carry.
        probe = Extractor(config, device="cpu", batch_tokens=batch_tokens, threads=threads)
        resolved, meta = probe.config, build_metadata(probe, source)
        del probe
        writer.start({**fingerprint(source, resolved, part_rows), "engine": "ray"}, resume=resume, overwrite=overwrite)
        if writer.complete:  # killed after the merge: the output is this job's, whole
            return _summarise(Path(output), writer.output_rows(), 0, time.perf_counter() - started, 0.0)
        done = {_part_index(p["file"]) for p in writer.parts}
        total = source.total_rows() if progress else None
        resumed = writer.rows_done
        t0, tokens, sent = time.perf_counter(), 0, 0
        if resumed:
            log.info("resuming %s: %d parts committed", output, len(done))
        worker_threads = threads or (max(1, int(cpus_per_worker)) if not gpus_per_worker else None)
        with writer.abandoned_on_failure(), _progress_bar(total, progress) as bar, ray_session(address) as ray:
            bar.update(resumed)
            size = _pool_size(ray, workers, gpus_per_worker, cpus_per_worker)
            wave_parts = WAVE_PARTS_PER_WORKER * (size[1] if isinstance(size, tuple) else size)
            for wave in _waves(source, part_rows, done, wave_parts):
                sent += len(wave)
                sizes = {item["part"]: item["rows"] for item in wave}
                stream = _run(
                    ray, wave, resolved, device, batch_tokens, worker_threads, size, gpus_per_worker, cpus_per_worker
                )
                for index, table in _whole_parts(stream, part_rows, sizes):
                    if strict:
                        _stop_at_bad_row(table)
                    writer.commit(table, index=index)
                    tokens += int(pc.sum(table.column("n_tokens")).as_py() or 0)
                    bar.update(table.num_rows)
        if not sent and not done:
            writer.abandon()
            raise InputError(f"{input} holds no data rows")
        writer.parts.sort(key=lambda p: p["file"])  # committed as they finished; merged in input order
        writer.finish(meta)
        return _summarise(Path(output), resumed, tokens, time.perf_counter() - started, time.perf_counter() - t0)


def _waves(source: Source, part_rows: int, done: set[int], wave_parts: int) -> Iterator[list[dict[str, Any]]]:
    """The parts not yet committed, pickled, in lists of at most ``wave_parts``, read lazily from the input."""
    wave: list[dict[str, Any]] = []
    for records in source.batches(part_rows):
        index = records.row_numbers[0] // part_rows
        if index in done:
            continue
        wave.append(
            {"part": index, "rows": len(records), "records": pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)}
        )
        if len(wave) == wave_parts:
            yield wave
            wave = []
    if wave:
        yield wave


def _run(ray, todo, config: ExtractConfig, device, batch_tokens, threads, size, gpus_per_worker, cpus_per_worker):
    """Run one wave through the Ray Data pipeline; yields output blocks (Arrow tables) as workers finish them."""
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws one bar in rows, like the local engine
    if isinstance(size, int):
        size = min(size, len(todo))  # a short last wave needs no more actors than parts
    pool = (
        ActorPoolStrategy(min_size=size[0], max_size=size[1])
        if isinstance(size, tuple)
        else ActorPoolStrategy(size=size)
    )
    dataset = ray.data.from_items(todo, override_num_blocks=len(todo))
    with warnings.catch_warnings():
        # Ray 2.5x deprecates passing actor options through **ray_remote_args but offers no named option for
        # restarts yet; without them Ray Data retries a dying actor forever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        embedded = dataset.map_batches(
            EmbedWorker,
            fn_constructor_kwargs={
                "config": config.to_dict(),
                "device": device,
                "batch_tokens": batch_tokens,
                "threads": threads,
            },
            batch_size=1,
            batch_format="pyarrow",
            compute=pool,
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker or None,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES,
        )
    yield from embedded.iter_batches(batch_size=None, batch_format="pyarrow")


def _whole_parts(blocks, part_rows: int, sizes: dict[int, int]) -> Iterator[tuple[int, pa.Table]]:
    """Regroup output blocks into whole parts in row order (Ray may split or merge blocks on the way)."""
    pending: dict[int, list[pa.Table]] = {}
    for block in blocks:
        if ERROR_COLUMN in block.column_names:
            error = pickle.loads(block.column(ERROR_COLUMN)[0].as_py())
            raise type(error)(f"on a Ray worker: {error}")
        part_of_row = block.column(ROW_COLUMN).to_numpy() // part_rows
        for index in np.unique(part_of_row):
            piece = block.filter(pa.array(part_of_row == index))
            pending.setdefault(int(index), []).append(piece)
            if sum(t.num_rows for t in pending[int(index)]) == sizes[int(index)]:
                table = pa.concat_tables(pending.pop(int(index)), promote_options="permissive")
                table = table.sort_by(ROW_COLUMN).drop_columns([ROW_COLUMN])
                yield int(index), table
    if pending:  # a part came back short: a bug, never a user mistake
        raise RuntimeError(f"parts {sorted(pending)} came back from Ray incomplete")


def _stop_at_bad_row(table: pa.Table) -> None:
    bad = np.flatnonzero(~np.isin(table.column("status").to_numpy(zero_copy_only=False), EMBEDDED_STATUSES))
    if bad.size:
        row = table.slice(int(bad[0]), 1).to_pylist()[0]
        raise InputError(f"row id {row['id']!r} is {row['status']}: {row['error']}")


__all__ = [
    "EmbedWorker",
    "MAX_RESTARTS",
    "MAX_TASK_RETRIES",
    "RAY_PART_ROWS",
    "embed_file_ray",
    "import_ray",
    "ray_session",
]
