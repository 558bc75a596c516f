"""FAISS similarity index: choose, train, add, verify, save/load and search by text, vector or id.

One module per job: ``plan`` (kind and factory string), ``faiss_ops`` (FAISS helpers, exact search),
``recall`` (evaluation, interval, tuning), ``rows`` (usable rows of a features file), ``files`` (directory
format), ``build``, ``adds`` (build's add pass), ``ray_build`` (the reading passes on Ray workers, merged), ``add``,
``search`` (the :class:`Index`), ``nearest`` (its vector search), ``queries`` (search a file of queries) and
``rescore`` (an index of int8 / binary vectors re-ranking its candidates with float vectors).

An index directory is an embedkit artefact (:mod:`embedkit.artefact`) holding:

* ``index.faiss``: the FAISS index (built from an ``index_factory`` string),
* ``ids.parquet``: row ``i`` of the FAISS index is row ``i`` of this table (the features ``id`` plus any
  stored columns such as ``text``, for display),
* ``vectors.npy`` (only with ``index build --rescore-with``): the float vectors of the FAISS rows, memory-mapped
  by search to re-rank the candidates of the compact vectors (:mod:`embedkit.index.rescore`),
* ``index.json``, the manifest, written last: extraction settings of the indexed column (so ``search`` embeds
  query text exactly the same way), metric, index kind, factory string, counts, tuned search parameters, build
  figures and the sha256 and size of every file, all checked before FAISS reads anything.

Every write (``build``, ``build --overwrite``, ``add``) holds the directory's lock, writes a complete new
directory aside and switches it in by rename, so a kill at any instant leaves the previous index or the new one,
and two writers never both succeed. ``add`` re-reads the index under the lock, so concurrent adds serialise and
no batch is lost. Indexes of format 1 (``index-N.faiss`` / ``ids-N.parquet`` named in ``index.json``) are still
read; the first ``add`` rewrites them in the current format.

Build streams the features file twice in bounded batches: the first pass draws a training sample and a
held-out query sample, the second adds vectors to the index while keeping the exact top-k of the query sample
(a running heap), so recall is measured without ever holding the whole matrix. Recall is leave-one-out: a
query's own row is removed from both the exact and the approximate neighbours. Rows whose vector holds NaN, an
infinity or values whose square overflows float32 are skipped and counted, like rows without an embedding:
FAISS would index them, but no search could ever rank them.
"""

from .add import AddReport, add_to_index
from .build import BuildReport, build_index
from .compact import COMPACT_FRACTION
from .delete import DeleteReport, compact_index, delete_from_index, read_ids
from .faiss_ops import apply_params
from .files import ARTEFACT_KIND, IDS_FILE, INDEX_FILE, INDEX_FORMAT, META_FILE
from .plan import CODES, DEFAULT_MEMORY, KINDS, METRICS, IndexPlan, human_bytes, ivf_lists, parse_memory, plan_index
from .recall import DEFAULT_TARGET_RECALL, EVAL_K, EVAL_QUERIES, Evaluation, recall_at_k, tune, wilson_interval
from .result import SearchResult
from .rows import BATCH_ROWS
from .search import DEFAULT_K, Index, load_index

__all__ = [
    "ARTEFACT_KIND",
    "BATCH_ROWS",
    "DEFAULT_K",
    "DEFAULT_MEMORY",
    "DEFAULT_TARGET_RECALL",
    "EVAL_K",
    "EVAL_QUERIES",
    "IDS_FILE",
    "INDEX_FILE",
    "INDEX_FORMAT",
    "KINDS",
    "CODES",
    "META_FILE",
    "METRICS",
    "COMPACT_FRACTION",
    "AddReport",
    "DeleteReport",
    "compact_index",
    "delete_from_index",
    "read_ids",
    "BuildReport",
    "Evaluation",
    "Index",
    "IndexPlan",
    "SearchResult",
    "add_to_index",
    "apply_params",
    "build_index",
    "human_bytes",
    "ivf_lists",
    "load_index",
    "parse_memory",
    "plan_index",
    "recall_at_k",
    "tune",
    "wilson_interval",
]
