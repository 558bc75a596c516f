"""The Ray engine: the whole embed job as a Ray Data pipeline, the driver handling metadata only (``--engine ray``).

How it runs (``RayEngine.run``, called by the one embed driver ``embedkit.embed.embed``):

1. Plan (``plan.py``): the input's files (local paths, or URIs of any filesystem pyarrow or fsspec reaches:
   ``embedkit.input_files``) are cut into shards of ``part_rows`` rows, a fixed row range of one file each,
   numbered in input order. Row counts come from Parquet footers, or for line formats from one counting task
   per file on the cluster, which also records where each shard starts; the plan needs no data on the driver and
   is the same on every run.
2. The driver opens the output dataset (``dataset.DatasetWriter``: its lock, its fingerprint, the shards already
   done) and builds the pipeline ``read_datasource(ShardDatasource) -> map_batches(ShardEmbedder)``.
3. Read (``read.py``): Ray Data runs one read task per shard still to do on the cluster's workers; each reads
   its shard's rows with embedkit's ``Source`` (from the byte offset the plan recorded) and yields them as one
   block. The streaming executor runs the reads ahead of and alongside the model work: reading overlaps
   embedding, and no row passes through the driver.
4. Embed (``worker.py``): ``map_batches`` runs the blocks on one persistent pool of ``ShardEmbedder`` actors
   (``--workers N``, or ``MIN:MAX`` for an autoscaling pool; CPU or GPU actors): each loads the model once, then
   for each block checks the shard arrived whole, embeds it with the local engine's ``Extractor``, builds the
   rows with ``embed.build_table`` (statuses of bad rows included) and writes the shard itself
   (``dataset.write_shard``). Only each shard's info dict (index, file, rows, checksum) comes back, and the
   driver records it; at the end it finishes the dataset with the metadata the first actor sent.

One block is one shard, and one actor call: ``batch_size=None`` hands an actor each block as it is (no
re-bundling), and the pipeline's ``target_max_block_size`` is unset so that the read does not cut a large shard
into several blocks by size. The block carries its shard index and planned row count, and the actor refuses a
shard with rows missing, so a shard can never be silently split or merged.

Why not Ray's ``read_csv``/``read_json``/``read_parquet``: the pyarrow readers under them stop at the first
malformed CSV or JSON line and number no rows, so they could keep neither embedkit's bad-row contract (a
malformed row becomes an output row with a status) nor row-number ids, and the blocks they produce are re-cut
by Ray Data (merged and split by size), so a block could not be a shard. The read tasks use ``Source`` instead,
through Ray Data's own reader interface (``Datasource``): the same parsing, statuses and ids as the local
engine, on the workers.

Failures: an actor that dies (node lost, OOM kill) is restarted and its shard retried (``MAX_RESTARTS``,
``MAX_TASK_RETRIES``); a retried shard is written again under the same name, atomically. An embedkit error
(model missing on a node, ``--strict``, an input file changed since the plan) is not retried, since it would
happen again, and reaches the driver typed. Shards written before a failed run stay in the dataset's staging
area, and ``--resume`` runs only the missing ones.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import errors
from ...config import ExtractConfig
from ...errors import ConfigError, EmbedkitError, InputError, OutputError
from ...input_files import InputFile, RemoteFile, uri_scheme
from ...spec import InputSpec, Runtime
from .. import JobEngine
from .cluster import INSTALL_HINT, Workers, _check_reachable, _pool, import_ray, ray_session
from .plan import Shard, file_sizes, input_identity, plan, row_counts, spec_to_dict
from .tasks import ShardMap, first_line, ray_map, shard_counts
from .worker import ShardEmbedder

if TYPE_CHECKING:
    from ...dataset import DatasetWriter
    from ...embed import EmbedSummary

log = logging.getLogger(__name__)

# Rows per shard (one actor call, one output file). Smaller than the local engine's 4,096 so that inputs of a
# few thousand rows still reach several workers and a failure loses little; on a GPU worker 1,024 short texts
# still fill several token-budget batches.
RAY_PART_ROWS = 1024
# An actor that dies (not an exception: a lost node or an OOM kill) is restarted this many times, and the shard
# it held is retried this many times, before the run fails. Ray Data's default is to retry forever, which turns
# a shard that always kills its worker into a run that never ends.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
# How long the job waits for the pool's first actors (MIN of MIN:MAX) to be placed and load the model.
WAIT_FOR_ACTORS_S = 600
# Read tasks reserve no CPU: the default pool gives every CPU to a model actor, and a read task waiting for a CPU
# would then wait for ever. Reading is light next to the model; READS_PER_ACTOR bounds how many run at once (on
# 2 cores, 2 per actor started more worker processes and delayed the actors' start by ~10 s on a 48-row job).
READ_CPUS = 0
READS_PER_ACTOR = 1
# Filesystems that live inside one process: the Ray workers, other processes, cannot see their files.
PROCESS_LOCAL_SCHEMES = ("memory",)


def parse_workers(value: str | int | tuple[int, int] | None) -> Workers:
    """``--workers``: ``N`` actors, or ``MIN:MAX`` for a pool that grows with the work (ConfigError otherwise)."""
    if value is None or isinstance(value, (int, tuple)):
        workers = value
    else:
        low, sep, high = str(value).partition(":")
        if not (low.strip().isdigit() and (not sep or high.strip().isdigit())):
            raise ConfigError(f"--workers takes N or MIN:MAX, got {value!r}")
        workers = (int(low), int(high)) if sep else int(low)
    bounds = workers if isinstance(workers, tuple) else (workers, workers) if workers is not None else (1, 1)
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise ConfigError(f"--workers must be at least 1 (and MIN <= MAX), got {value!r}")
    return workers


# ---------------------------------------------------------------------------------------------- engine


class RayEngine(JobEngine):
    """Runs the embed job as a Ray Data pipeline on a persistent actor pool; see the module's description.

    Args:
        address: Ray cluster to join (None: a local instance, or ``$RAY_ADDRESS``; ``auto``; ``HOST:PORT``).
        workers: model actors: ``N``, or ``(MIN, MAX)`` for an autoscaling pool [default: as many as the cluster
            has room for].
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU); 0 runs on CPUs.
        cpus_per_worker: CPUs each actor reserves; also its torch threads unless the runtime names ``threads``.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: Workers | str = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
    ) -> None:
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise ConfigError("--gpus-per-worker must be >= 0 and cpus per worker > 0")
        self.address, self.workers = address, parse_workers(workers)
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        #: Shards written by each node (Ray node id) in the last run: where the work went.
        self.shards_per_node: dict[str, int] = {}

    def check(self, runtime: Runtime, output: Path) -> None:
        """Refuse contradictory options before anything is read or started (ConfigError)."""
        if self.gpus_per_worker and runtime.device == "cpu":
            raise ConfigError("--gpus-per-worker asks for GPUs but --device is cpu; use --device auto or cuda")
        if runtime.device == "cuda" and not self.gpus_per_worker:
            # Ray hides every GPU from an actor that reserves none, so the workers could never see one.
            raise ConfigError("--device cuda with --engine ray needs --gpus-per-worker (e.g. 1)")
        ray = import_ray()  # before any work: a missing extra is the first thing to say
        if self.address not in (None, "auto", "local") and not ray.is_initialized():
            _check_reachable(self.address)  # before the output is touched: nothing is left behind
        if output.suffix.lower() in (".parquet", ".pq") or output.is_file():
            # Merging on the driver would send every vector through it, which the engine exists to avoid.
            raise ConfigError(
                f"--engine ray writes a sharded dataset directory (each worker writes its own shards), not one file "
                f"like {output}; give a directory, e.g. -o {output.with_suffix('')}/ (every stage reads it as it "
                "reads one file)"
            )

    def run(
        self,
        spec: InputSpec,
        output: Path,
        config: ExtractConfig | None,
        runtime: Runtime,
        *,
        resume: bool = False,
        overwrite: bool = False,
        wait: bool = False,
        strict: bool = False,
        part_rows: int | None = None,
    ) -> EmbedSummary:
        from ...dataset import DatasetWriter, read_manifest
        from ...embed import model_files

        started = time.perf_counter()
        self.check(runtime, output)
        config = config or ExtractConfig()
        shard_rows = part_rows or RAY_PART_ROWS
        source = spec.source()
        _check_workers_can_read(source.files)
        fingerprint = {
            "settings": config.vector_settings(),
            "model_files": model_files(config.model),
            "input": input_identity(source),
            "columns": {"text": source.text_column, "id": source.id_column, "keep": source.keep},
            "part_rows": shard_rows,
            "engine": "ray",  # shards are fixed row ranges of one file each: another engine plans them otherwise
        }
        # The dataset's lock first: a second writer of the same output stops here before Ray starts.
        with DatasetWriter(output, fingerprint, resume=resume, overwrite=overwrite, wait=wait) as writer:
            if writer.complete:  # --resume of a job killed after its switch: the dataset is whole
                return _summarise(output, read_manifest(output).rows, 0, time.perf_counter() - started, 0.0)
            done = set(writer.done())
            with writer.abandoned_on_failure(), ray_session(self.address) as ray:
                counts, marks = row_counts(ray, spec, source, shard_rows)
                shards = plan(counts, shard_rows, marks, file_sizes(source))
                if not shards:
                    raise InputError(f"{spec.path} holds no data rows")
                todo = [s for s in shards if s.index not in done]
                resumed = sum(s.stop - s.start for s in shards if s.index in done)
                t0 = time.perf_counter()
                meta, tokens = self._embed(ray, spec, source.files, config, runtime, writer, todo, shard_rows, strict)
                embed_seconds = time.perf_counter() - t0
                if meta is None:  # every shard was done already: the metadata comes from the settings alone
                    meta = _probe_metadata(config, spec)
                # The workers hashed their shards as they wrote them, and the checks (sizes, rows) and any rewrite
                # (int8's one scale) run as Ray tasks: the driver reads none of the output (readers still check
                # every sha256 before first use).
                on_workers = ray_map(ray, self.cpus_per_worker)
                writer.finish(meta, verify_checksums=False, map_shards=on_workers)
                seconds = time.perf_counter() - started
                return _summarise(output, resumed, tokens, seconds, embed_seconds, on_workers)

    def _embed(
        self,
        ray,
        spec: InputSpec,
        files: list[InputFile],
        config: ExtractConfig,
        runtime: Runtime,
        writer: DatasetWriter,
        todo: list[Shard],
        shard_rows: int,
        strict: bool,
    ) -> tuple[dict[str, Any] | None, int]:
        """Run ``todo`` on the actor pool; records each written shard. The dataset metadata and tokens embedded."""
        from ...progress import progress_bar

        if not todo:
            return None, 0
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # embedkit draws its own bar (or none with -q)
        context.print_on_execution_start = False
        # Start once the pool's (first MIN) actors have their models loaded: otherwise the first actor ready takes
        # the first shards while the others still import torch, and a small job never leaves one node.
        context.wait_for_min_actors_s = WAIT_FOR_ACTORS_S
        gpus = self.gpus_per_worker
        threads = runtime.threads or (max(1, int(self.cpus_per_worker)) if not gpus else None)
        actor_args = {
            "spec": spec_to_dict(spec),
            "config": config.to_dict(),
            "device": runtime.device,
            "batch_tokens": runtime.batch_tokens,
            "threads": threads,
            "staging": str(writer.staging),
            "strict": strict,
        }
        from .read import ShardDatasource

        pool = _pool(ray, self.workers, gpus, self.cpus_per_worker)
        blocks = ray.data.read_datasource(
            ShardDatasource(spec_to_dict(spec), files, todo),
            num_cpus=READ_CPUS,
            concurrency=max(1, min(len(todo), int(pool.max_size or 1) * READS_PER_ACTOR)),
            override_num_blocks=len(todo),
        )
        # One block per read task, however large the shard: with a target block size the read would cut a shard
        # of long texts into several blocks. Set on this pipeline's own copy of the context, not the process's.
        blocks.context.target_max_block_size = None
        # Each block as it is, one whole shard per call. map_batches refuses batch_size=None with GPUs (a check for
        # batches that would be whole blocks of unknown size); a shard's size is bounded by --part-rows, and
        # map_batches_internal is the same call without that check.
        map_batches = blocks.map_batches_internal if gpus and hasattr(blocks, "map_batches_internal") else None
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for an actor's restarts and retries: they only pass as ray_remote_args,
            # which warns of its removal in 2.64. Without them Ray retries a shard that kills its actor forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            results = (map_batches or blocks.map_batches)(
                ShardEmbedder,
                fn_constructor_kwargs=actor_args,
                batch_size=None,
                batch_format="pyarrow",
                compute=pool,
                num_cpus=self.cpus_per_worker,
                num_gpus=gpus or None,
                max_restarts=MAX_RESTARTS,
                max_task_retries=MAX_TASK_RETRIES,
            )
        meta, tokens = None, 0
        self.shards_per_node = {}
        total = sum(s.stop - s.start for s in todo)
        with progress_bar("embed", total, unit="text", enabled=runtime.progress) as bar:
            for row in _rows(ray, results):
                info = json.loads(row["info"])
                if "error" in info:
                    error_type = getattr(errors, str(info["error_type"]), None)
                    if not (isinstance(error_type, type) and issubclass(error_type, EmbedkitError)):
                        error_type = EmbedkitError
                    raise error_type(f"on a Ray worker: {info['error']}")
                facts = info.pop("facts")
                writer.record(info)
                meta = meta or facts.get("meta")
                tokens += facts["tokens"]
                self.shards_per_node[facts["node"]] = self.shards_per_node.get(facts["node"], 0) + 1
                bar.update(info["rows"])
        return meta, tokens


def _check_workers_can_read(files: list[InputFile]) -> None:
    """ConfigError for an input on a filesystem that lives in this process only (fsspec's ``memory://``)."""
    for file in files:
        if isinstance(file, RemoteFile) and uri_scheme(file.root) in PROCESS_LOCAL_SCHEMES:
            raise ConfigError(
                f"{file.uri} is on a filesystem inside this process, which the Ray workers cannot read; use "
                "--engine local, or put the input on storage every node reaches"
            )


def _rows(ray, results) -> Iterator[dict[str, Any]]:
    """The pipeline's output rows; a pool that never started is said as such, not as a Ray timeout."""
    try:
        yield from results.iter_rows()
    except ray.exceptions.GetTimeoutError as exc:
        raise ConfigError(
            f"the Ray cluster did not start the model actors within {WAIT_FOR_ACTORS_S} s (too few CPUs/GPUs for "
            f"--workers?): {exc}"
        ) from exc
    except ray.exceptions.RayError as exc:
        # A node lost for good, retries spent: the shards written so far are kept for --resume.
        raise OutputError(
            f"the Ray job failed ({type(exc).__name__}: {first_line(exc)}); the shards written so far are kept: "
            "run the same command with --resume to finish the rest"
        ) from exc


def _probe_metadata(config: ExtractConfig, spec: InputSpec) -> dict[str, Any]:
    """The dataset metadata from a model loaded here, on CPU: only when no actor ran (a resume of a run killed
    after its last shard), since the actors send it otherwise and the driver loads no model."""
    from ...embed import build_metadata
    from ...extract import Extractor

    return build_metadata(Extractor(config, device="cpu"), spec)


def _summarise(
    output: Path, resumed: int, tokens: int, seconds: float, embed_seconds: float, map_shards: ShardMap | None = None
) -> EmbedSummary:
    """The run's summary, counted from the finished dataset's small columns (by Ray tasks when ``map_shards``)."""
    from ...dataset import map_here, read_manifest
    from ...embed import EmbedSummary
    from ...extract.texts import EMBEDDED_STATUSES

    summary = EmbedSummary(output=output, resumed_rows=resumed, tokens=tokens, seconds=seconds)
    summary.embed_seconds = embed_seconds
    statuses: dict[str, int] = {}
    run = map_shards or map_here
    for counts in run(shard_counts, [(output / shard.file,) for shard in read_manifest(output).shards]):
        summary.rows += counts["rows"]
        summary.truncated += counts["truncated"]
        summary.chunked += counts["chunked"]
        for status, n in counts["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    summary.embedded = sum(statuses.get(s, 0) for s in EMBEDDED_STATUSES)
    summary.bad_rows = {s: n for s, n in statuses.items() if s not in EMBEDDED_STATUSES}
    summary.repaired, summary.cut = statuses.get("repaired", 0), statuses.get("cut", 0)
    return summary


__all__ = [
    "INSTALL_HINT",
    "MAX_RESTARTS",
    "MAX_TASK_RETRIES",
    "RAY_PART_ROWS",
    "RayEngine",
    "ShardEmbedder",
    "import_ray",
    "parse_workers",
    "ray_session",
]
