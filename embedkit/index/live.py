"""Which FAISS rows a search may return: deleted rows (tombstones) and filters, as a FAISS ``IDSelector``.

A deleted row stays in the FAISS index (HNSW cannot remove a vector; IVF lists would renumber) until the index
is compacted; its position is listed in ``deleted.parquet``. Every search then runs with an ``IDSelectorBitmap``
of the allowed rows passed in ``SearchParameters``, so FAISS skips the others while it searches and the k it
returns are the top k among the allowed rows (not the top k of all rows, filtered afterwards).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from .faiss_ops import _faiss, _hnsw_of, _ivf_of

DELETED_FILE = "deleted.parquet"
MAX_FILTER_EF_SEARCH = 4096  # widest HNSW search a filter may ask for (past it, the exact fallback is cheaper)


def read_deleted(path, rows: int) -> np.ndarray:
    """Sorted, distinct positions of deleted rows; InputError when the file does not fit the index."""
    try:
        with pq.ParquetFile(path) as deleted_file:  # not read_table: see files._read_index
            table = deleted_file.read()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: the list of deleted rows is unreadable: {exc}") from exc
    if table.column_names != ["position"] or not pa.types.is_integer(table.schema.field("position").type):
        raise InputError(f"{path}: expected one integer column 'position'; rebuild the index")
    positions = np.asarray(table.column("position").fill_null(-1), dtype=np.int64)
    if len(positions) and (
        positions.min() < 0 or positions.max() >= rows or len(np.unique(positions)) != len(positions)
    ):
        raise InputError(f"{path}: deleted positions outside 0..{rows - 1} or repeated; rebuild the index")
    return np.sort(positions)


def write_deleted(path, positions: np.ndarray) -> None:
    pq.write_table(pa.table({"position": pa.array(np.sort(positions), pa.int64())}), path)


def live_mask(rows: int, deleted: np.ndarray) -> np.ndarray:
    mask = np.ones(rows, dtype=bool)
    mask[deleted] = False
    return mask


class Selection:
    """An allowed-rows mask turned into FAISS search parameters (the packed bitmap is kept alive here)."""

    def __init__(self, allowed: np.ndarray) -> None:
        self.allowed = allowed
        self.count = int(allowed.sum())
        self._bits = np.packbits(allowed, bitorder="little")
        self.selector = _faiss().IDSelectorBitmap(len(allowed), _faiss().swig_ptr(self._bits))

    def params(self, index):
        """SearchParameters for ``index`` that carry the selector and the index's current nprobe / efSearch.

        Parameters passed to a search replace the index's own settings (an IVF would fall back to nprobe 1), so
        the tuned values are copied in.
        """
        faiss = _faiss()
        ivf, hnsw = _ivf_of(index), _hnsw_of(index)
        # FAISS visits excluded rows too but keeps only allowed ones: with a fraction f allowed, about f of the
        # candidates an IVF list or an HNSW walk yields count, so the search widens by 1/f to keep as many.
        fraction = max(self.count, 1) / len(self.allowed)
        if ivf is not None:
            nprobe = min(int(ivf.nlist), math.ceil(int(ivf.nprobe) / fraction))
            params = faiss.SearchParametersIVF(sel=self.selector, nprobe=nprobe)
        elif hnsw is not None:
            ef = min(MAX_FILTER_EF_SEARCH, math.ceil(int(hnsw.hnsw.efSearch) / fraction))
            params = faiss.SearchParametersHNSW(sel=self.selector, efSearch=ef)
        else:
            params = faiss.SearchParameters(sel=self.selector)
        if isinstance(index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
        # The SWIG objects keep only raw pointers: hold the selector (and its bitmap) as long as the parameters.
        params._selection = self
        return params
