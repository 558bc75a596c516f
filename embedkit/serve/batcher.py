"""Dynamic micro-batching: concurrent requests share the Extractor's length-sorted token-budget batches.

One worker thread owns each loaded model, so the event loop never runs model code and torch never sees two
callers at once. Requests wait in a bounded queue; the worker takes everything queued (up to a cap), waits a
few ms at most for more, tokenises the texts together, and runs them through ``Extractor.encode_tokens`` in
one call: the very batching ``embedkit embed`` uses (sorted by length, cut to a token budget), not a second
algorithm. Each request then gets its own rows back through its asyncio future.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import EmbedkitError, InputError
from ..extract.extractor import check_tokens
from .settings import Batching

log = logging.getLogger(__name__)


class QueueFullError(EmbedkitError):
    """Too many requests are waiting for the model; the client should retry shortly."""

    exit_code = 7


@dataclass
class Embedded:
    """One request's rows: vectors [n, dim] of the served column, and tokens per input (specials included)."""

    vectors: np.ndarray
    n_tokens: np.ndarray


@dataclass(frozen=True)
class BatchStats:
    """What one worker step did, for the metrics."""

    requests: int
    inputs: int
    tokens: int
    seconds: float


@dataclass
class _Job:
    texts: Sequence[str] | None
    tokens: Sequence[Sequence[int]] | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    size: int = field(init=False)

    def __post_init__(self) -> None:
        rows = self.texts if self.texts is not None else self.tokens
        assert rows is not None, "a job holds texts or token ids"
        self.size = len(rows)


def _settle(future: asyncio.Future, result: Embedded | None, error: BaseException | None) -> None:
    if future.done():  # the client went away and its handler was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _deliver(job: _Job, result: Embedded | None, error: BaseException | None = None) -> None:
    """Hand a result to the job's event loop (futures are not thread-safe: the loop itself must set them)."""
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)
    except RuntimeError:  # that loop has closed: nobody is waiting any more, and the worker must go on
        pass


class MicroBatcher:
    """Queue in front of one Extractor, drained by one worker thread.

    Args:
        extractor: the loaded model; only the worker thread touches it once ``start`` is called.
        batching: wait and merge bounds.
        max_queue: requests that may wait; ``submit`` raises QueueFullError beyond it.
        on_batch: called by the worker after every step (metrics).
        name: thread name, shown in stack dumps.
    """

    def __init__(
        self,
        extractor,
        batching: Batching,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "embedkit-model",
    ) -> None:
        if len(extractor.columns) != 1:
            raise InputError(f"a served model makes one vector per text; this one makes {extractor.columns}")
        self.extractor = extractor
        self.column = extractor.columns[0]
        self.batching = batching
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._carry: _Job | None = None  # the job that did not fit in the last step; first in the next
        self._on_batch = on_batch
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the work already queued (the server closes it once in-flight requests are done)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    async def embed_texts(self, texts: Sequence[str]) -> Embedded:
        return await self._submit(texts, None)

    async def embed_tokens(self, tokens: Sequence[Sequence[int]]) -> Embedded:
        return await self._submit(None, tokens)

    async def _submit(self, texts, tokens) -> Embedded:
        loop = asyncio.get_running_loop()
        job = _Job(texts, tokens, loop, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"{self._queue.maxsize} requests are already waiting for the model") from None
        return await job.future

    # ------------------------------------------------------------------------------------------ worker thread

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` plus whatever joins within the wait, up to the merge cap; True when the sentinel came."""
        jobs, total = [first], first.size
        deadline = time.monotonic() + self.batching.wait_ms / 1000
        while total < self.batching.max_inputs:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if total + job.size > self.batching.max_inputs:
                self._carry = job
                break
            jobs.append(job)
            total += job.size
        return jobs, False

    def _run(self) -> None:
        stopping = False
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            elif stopping:
                return
            else:
                queued = self._queue.get()
                if queued is None:
                    return
                first = queued
            jobs, stopping = self._gather(first) if not stopping else ([first], True)
            self._step(jobs)

    def _step(self, jobs: list[_Job]) -> None:
        # A request whose client went away was cancelled while it waited: its rows would be computed for nobody.
        jobs = [job for job in jobs if not job.future.cancelled()]
        if not jobs:
            return
        started = time.perf_counter()
        try:
            result = self._encode(jobs)
        except Exception as exc:  # every waiting request must hear of it; the worker itself goes on
            if not isinstance(exc, EmbedkitError):
                log.exception("model run failed")
            for job in jobs:
                _deliver(job, None, exc)
            return
        vectors, offset = result.vectors[self.column], 0
        for job in jobs:
            rows = slice(offset, offset + job.size)
            offset += job.size
            bad = np.flatnonzero(~result.valid[rows])
            if bad.size:
                # Routes refuse empty inputs before queueing; a row failing here fails its own request only.
                i = int(bad[0]) + rows.start
                error: InputError | None = InputError(
                    f"input {bad[0]} cannot be embedded: {result.status[i]}: {result.error[i]}"
                )
                _deliver(job, None, error)
            else:
                _deliver(job, Embedded(vectors[rows], result.n_tokens[rows]))
        if self._on_batch is not None:
            tokens = int(result.n_tokens.sum())
            self._on_batch(BatchStats(len(jobs), offset, tokens, time.perf_counter() - started))

    def _encode(self, jobs: list[_Job]):
        # One tokenizer call for every text of the step: the fast tokenizer parallelises a list, not single calls.
        texts = [t for job in jobs if job.texts is not None for t in job.texts]
        text_rows = iter(zip(*self.extractor.tokenize(texts))) if texts else iter(())
        checked, contents = [], []
        for job in jobs:
            if job.texts is not None:
                for c, ids in (next(text_rows) for _ in range(job.size)):
                    checked.append(c)
                    contents.append(ids)
            else:
                assert job.tokens is not None  # a job holds texts or token ids
                for ids in job.tokens:
                    checked.append(check_tokens(ids))
                    contents.append(list(ids))
        return self.extractor.encode_tokens(contents, checked=checked)
