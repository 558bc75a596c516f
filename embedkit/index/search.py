"""A loaded index (:class:`Index`): verified loading and search by text, vector or id."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import artefact
from ..config import ExtractConfig
from ..errors import IncompatibleError, InputError
from ..store import Features, open_features
from .faiss_ops import _ivf_of, apply_params
from .files import META_FILE, _manifest_bytes, _read_index
from .filter import where_mask
from .live import live_mask
from .nearest import nearest
from .queries import check_output, search_all
from .rescore import FloatVectors
from .rescore import load as load_float_vectors
from .result import SearchResult, _coerce_id
from .rows import BATCH_ROWS, _column_dim

log = logging.getLogger(__name__)


EXACT_FILTER_ROWS = 2048
EXACT_FILTER_FRACTION = 0.02
LOAD_ATTEMPTS = 20  # a reader that saw the directory switched under it (a concurrent add) reads it again

DEFAULT_K = 10


def _settings_diff(a: ExtractConfig, b: ExtractConfig) -> list[str]:
    va, vb = a.vector_settings(), b.vector_settings()
    model = a.model_difference(b)  # same settings, but another checkpoint at the model path
    return [f"{k}={va.get(k)!r} vs {vb.get(k)!r}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)] + (
        [model] if model else []
    )


class Index:
    """A loaded, verified index directory.

    Example:
        >>> index = Index.load("docs-index")
        >>> index.search("how do I reset my password", k=5).hits()
    """

    def __init__(
        self,
        directory: Path,
        faiss_index,
        ids: pa.Table,
        meta: dict[str, Any],
        device: str = "auto",
        trust_remote_code: bool = False,
        deleted: np.ndarray | None = None,
        float_vectors: FloatVectors | None = None,
    ):
        self.directory = Path(directory)
        self.float_vectors = float_vectors  # re-scores the candidates of an int8 / binary index (rescore.py)
        self.deleted = np.empty(0, np.int64) if deleted is None else deleted  # FAISS rows deleted, not compacted
        self.trust_remote_code = trust_remote_code  # the caller's decision; index.json's own is never used
        self.faiss_index = faiss_index
        self.ids = ids
        self.meta = meta
        self.device = device
        self._extractor = None
        self._positions: dict[Any, int] | None = None
        self._where: tuple[str, pa.Table, np.ndarray] | None = None
        if meta.get("params"):
            apply_params(faiss_index, meta["params"])

    # -- loading

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto", trust_remote_code: bool = False) -> Index:
        """Open an index directory: every field of ``index.json`` and every file are checked before FAISS reads.

        Readers take no lock: a directory switched in by a concurrent writer (``index add``) while it was being
        read is read again, so a search never mixes two generations nor fails because of one.

        Raises:
            InputError: not an index directory, incomplete, a field of ``index.json`` missing or invalid, a file
                name that leads outside the directory, a file changed, truncated or replaced by a symlink.
            IncompatibleError: an index format this embedkit does not know (written by a newer one).
        """
        directory = Path(directory)
        for attempt in range(LOAD_ATTEMPTS):
            before = _manifest_bytes(directory)
            try:
                index, ids, meta, deleted = _read_index(directory)
                floats = load_float_vectors(directory, meta, int(index.ntotal), int(index.d))
            except InputError:
                if attempt + 1 < LOAD_ATTEMPTS and _manifest_bytes(directory) != before:
                    continue
                raise
            if _manifest_bytes(directory) == before:
                return cls(directory, index, ids, meta, device, trust_remote_code, deleted, floats)
        raise InputError(f"{directory} was replaced {LOAD_ATTEMPTS} times while it was being read; try again")

    # -- facts

    @property
    def config(self) -> ExtractConfig:
        return ExtractConfig.from_stored(
            self.meta["config"],
            trust_remote_code=self.trust_remote_code,
            origin=str(self.directory / META_FILE),
            model=self.meta.get("model"),
        )

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def kind(self) -> str:
        return self.meta["index_kind"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def size(self) -> int:
        """Rows a search can return (deleted rows not counted)."""
        return int(self.faiss_index.ntotal) - len(self.deleted)

    def live(self) -> np.ndarray | None:
        """Mask of the FAISS rows not deleted; None when none is (every row may be returned)."""
        return live_mask(int(self.faiss_index.ntotal), self.deleted) if len(self.deleted) else None

    def __len__(self) -> int:
        return self.size

    @property
    def stored_columns(self) -> list[str]:
        return [c for c in self.ids.column_names if c != "id"]

    @property
    def text_column(self) -> str | None:
        """The stored column holding each row's text (None when the index keeps no text)."""
        return self.meta.get("text_column")

    # -- embedding

    @property
    def extractor(self):
        """An Extractor with exactly the indexed column's settings (built on first use)."""
        if self._extractor is None:
            from ..extract import Extractor

            self.use_extractor(Extractor(self.config, device=self.device))
        return self._extractor

    def use_extractor(self, extractor) -> None:
        """Embed queries with ``extractor`` (e.g. one already loaded); refused unless its settings match."""
        if len(extractor.config.pairs) != 1:
            raise IncompatibleError("the extractor makes several columns; the index needs one layer and one pooling")
        diff = _settings_diff(extractor.config, self.config)
        if diff:
            raise IncompatibleError(
                f"the extractor does not embed like this index ({'; '.join(diff)}); "
                f"queries must be embedded with the index's settings: {self.config.vector_settings()}"
            )
        self._extractor = extractor

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("no query given")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(
                    f"query {i} is empty; give some text to search for"
                    if len(texts) > 1
                    else "the query is empty; give some text to search for"
                )
        return self.extractor.embed(texts)

    # -- searching

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = DEFAULT_K,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        exact: bool = False,
        where: str | None = None,
        rescore: bool = True,
    ) -> SearchResult:
        """Nearest rows to query texts (embedded with the stored settings) or to query vectors.

        ``where``: only rows whose stored columns satisfy this SQL condition (``section = 'games' AND year >=
        2020``, evaluated by DuckDB; see :mod:`embedkit.index.filter`); the hits are the top k among them.

        Scores: cosine similarity (cosine), inner product (ip) or Euclidean distance (l2, lower is closer).
        ``k`` above the index size is clamped (noted in ``SearchResult.notes``). ``exact``: compare with every
        stored vector (see ``search_vectors``); ``nprobe`` / ``ef_search`` override the tuned values for this call.
        ``rescore``: an index of int8 / binary vectors built with float vectors re-ranks its top ``k x factor``
        candidates by them (:mod:`embedkit.index.rescore`); False ranks by the compact vectors alone.
        """
        if isinstance(queries, np.ndarray):
            vectors = queries
        else:
            vectors = self.embed(queries)
        return self.search_vectors(
            vectors, k, nprobe=nprobe, ef_search=ef_search, exact=exact, where=where, rescore=rescore
        )

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = DEFAULT_K,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        exclude: np.ndarray | None = None,
        exact: bool = False,
        where: str | None = None,
        rescore: bool = True,
    ) -> SearchResult:
        """Nearest rows to query vectors; ``exact`` compares every stored vector instead of the index's shortcut.

        Exact search reads the vectors the index stores (flat, hnsw, ivf keep them whole) in chunks and is
        linear in the index size: the true top-k, for checking an approximate result or for a small index.
        ConfigError for ivfpq, which keeps only compressed codes, and with nprobe / ef_search (nothing to tune).
        With float vectors for re-scoring (and ``rescore``), exact search compares those instead.
        """
        return nearest(
            self,
            vectors,
            k,
            nprobe=nprobe,
            ef_search=ef_search,
            exclude=exclude,
            exact=exact,
            where=where,
            rescore=rescore,
            exact_filter_rows=_exact_filter_rows(self.size),
        )

    def search_ids(self, ids: Sequence[Any], k: int = DEFAULT_K, **knobs) -> SearchResult:
        """More like this: neighbours of rows already in the index (the row itself left out)."""
        positions = np.array([self.position_of(i) for i in ids], dtype=np.int64)
        if self.float_vectors is not None:  # the row's own float vector, not its compact approximation
            vectors = self.float_vectors.take(positions)
        else:
            vectors = np.vstack([self._reconstruct(p) for p in positions])
        return self.search_vectors(vectors, k, exclude=positions, **knobs)

    def search_features(
        self, features: str | Path, k: int = DEFAULT_K, column: str | None = None, **knobs
    ) -> tuple[SearchResult, pa.Table]:
        """Search with the vectors of an already embedded file; refused unless it was embedded like the index."""
        feats = open_features(features)
        column = feats.embedding_column(column)
        self._check_compatible(feats, column)
        matrix, table, skipped = feats.load(column)
        if skipped:
            log.warning("%d query rows without an embedding skipped", skipped)
        return self.search_vectors(matrix, k, **knobs), table

    def search_file(
        self,
        queries: str | Path,
        output: str | Path,
        k: int = DEFAULT_K,
        *,
        text_column: str | None = None,
        id_column: str | None = None,
        batch_rows: int = 1024,
        overwrite: bool = False,
        progress: bool = False,
        wait: bool = False,
        **knobs,
    ) -> dict[str, Any]:
        """Search every query of a file and write the hits to Parquet (one row per query and hit).

        ``queries`` is raw text (CSV, TSV, JSONL, Parquet, TXT; read with ``Source``) or a features Parquet
        embedded with the index's settings. ``text_column`` / ``id_column`` default to the input's columns the
        index was built from (recorded in ``index.json``; the id column only when the queries have it), else
        ``text`` and none. Output columns: ``query`` (row number), ``query_id`` (with an id column),
        ``query_text``, ``rank``, ``score``, ``id`` and the stored columns.
        ``output`` is locked for the whole run (BusyError if another process writes it, unless ``wait``) and
        written aside, then renamed: a failure or a kill leaves the previous file, if any, as it was.
        Returns counts: queries, searched, skipped (rows with no usable text) and hits.
        """
        output = Path(output)
        check_output(self, output, queries)
        with artefact.writing_file(output, overwrite=overwrite, wait=wait) as tmp:
            hits, counts, notes = search_all(self, queries, k, text_column, id_column, batch_rows, progress, knobs)
            pq.write_table(hits, tmp)
        return {**counts, "hits": hits.num_rows, "output": str(output), "notes": sorted(notes)}

    def matching(self, where: str) -> np.ndarray:
        """Mask of the FAISS rows whose stored columns satisfy ``where`` (the last condition's mask is kept)."""
        cached = self._where
        if cached is None or cached[0] != where or cached[1] is not self.ids:
            cached = self._where = (where, self.ids, where_mask(self.ids, where))
        return cached[2]

    def position_of(self, value: Any) -> int:
        """The FAISS row of the item with id ``value`` (a string is converted to the id column's type)."""
        if self._positions is None:
            dead = set(self.deleted.tolist())
            self._positions = {v: i for i, v in enumerate(self.ids.column("id").to_pylist()) if i not in dead}
        key = _coerce_id(value, self.ids.schema.field("id").type)
        if key not in self._positions:
            sample = ", ".join(map(str, self.ids.column("id").slice(0, 3).to_pylist()))
            raise InputError(f"no row with id {value!r} in the index (ids look like: {sample}, ...)")
        return self._positions[key]

    def _reconstruct(self, position: int) -> np.ndarray:
        ivf = _ivf_of(self.faiss_index)
        if ivf is not None and not ivf.direct_map.type:
            ivf.make_direct_map()
        return self.faiss_index.reconstruct(int(position))

    def _check_compatible(self, feats: Features, column: str) -> None:
        diff = _settings_diff(feats.column_config(column), self.config)
        if diff:
            raise IncompatibleError(
                f"{feats.path} column {column!r} was embedded differently from the index ({'; '.join(diff)}); "
                "re-embed it with the index's settings"
            )
        dim = _column_dim(feats, column)
        if dim != self.dim:
            raise IncompatibleError(
                f"{feats.path} column {column!r} holds {dim}-d vectors; the index holds {self.dim}-d"
            )

    # -- growing

    def add(
        self,
        features: str | Path,
        column: str | None = None,
        batch_rows: int = BATCH_ROWS,
        progress: bool = False,
        wait: bool = False,
        upsert: bool = False,
        rescore_with: str | Path | None = None,
    ) -> int:
        """Add the rows of another features file embedded with the same settings; returns rows added.

        See :func:`add_to_index`: the rows are added to the index as it is on disk under its lock (which may hold
        rows another process added since this object was loaded); this object then holds the result. An id
        already in the index is refused, unless ``upsert`` (the new row replaces the old one).
        """
        from .add import add_to_index  # add builds on Index: imported here, not at the top

        grown, report = add_to_index(
            self.directory,
            features,
            column=column,
            batch_rows=batch_rows,
            progress=progress,
            wait=wait,
            device=self.device,
            upsert=upsert,
            rescore_with=rescore_with,
        )
        self.faiss_index, self.ids, self.meta, self._positions = grown.faiss_index, grown.ids, grown.meta, None
        self.deleted, self.float_vectors = grown.deleted, grown.float_vectors
        return report.added


def _exact_filter_rows(rows: int) -> int:
    """Matching rows up to which a filtered search compares each of them (exact) instead of searching the index."""
    return max(EXACT_FILTER_ROWS, int(EXACT_FILTER_FRACTION * rows))


def load_index(directory: str | Path, device: str = "auto", trust_remote_code: bool = False) -> Index:
    """Shorthand for ``Index.load``."""
    return Index.load(directory, device=device, trust_remote_code=trust_remote_code)
