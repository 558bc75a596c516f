"""How vectors are stored in a features file, and how every stage reads them back as float32.

Four storage dtypes (``ExtractConfig.dtype``, ``embed --vector-dtype``), all ``fixed_size_list<...>[dim]`` so the
list size is the vector dimension whatever the encoding:

* ``float32``: as computed. ``float16``: half the bytes, ~3 significant digits.
* ``int8``: symmetric per-dimension scale, ``x ~= q * scale[d]`` with ``q`` in [-127, 127]. The scale is
  ``max |x[:, d]| / 127`` over the *whole file*, so nothing is clipped. A streaming writer cannot know that maximum
  while it commits parts, so int8 parts hold float32 and the merge that builds the final file quantises them
  (two passes over the parts: the maxima, then the quantised copy). A scale calibrated on the first batch would
  clip every later row that is larger, and per-part scales would tie decoding to row ranges; the merge already
  reads every part once, so one more read is the cheap, exact choice (benchmarks/vector_dtypes.py measures both).
  The scale is stored in the features metadata (``vectors.<column>.scale``); an int8 column is unreadable
  without it, which is why every reader goes through :func:`decode` with the column's entry.
* ``binary``: one sign bit per dimension (``x > 0``), stored as Arrow/Parquet booleans, which are bit-packed
  (the ``np.packbits`` little-endian layout), so 1/32 of float32. Read back as the unit vector of signs
  (``+-1/sqrt(dim)``): cosine and inner product then follow the Hamming distance. Sign bits keep only the
  orthant of a vector, so recall is poor on vectors that are not centred (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError

VECTOR_DTYPES = ("float32", "float16", "int8", "binary")
META_KEY = "vectors"  # features metadata: {column: {"dtype": "int8", "scale": [...]}} for int8 and binary columns
INT8_MAX = 127


# ---------------------------------------------------------------------------------------------- encode


def part_array(matrix: np.ndarray, valid: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """An [n, dim] float matrix as a committed part stores it, null where ``valid`` is False.

    int8 parts stay float32: their scale is only known when the merge has seen every part (:func:`merge_encoder`).
    """
    n, dim = matrix.shape
    matrix = np.nan_to_num(matrix, nan=0.0)
    mask = pa.array(~valid) if not valid.all() else None
    if dtype == "binary":
        return pa.FixedSizeListArray.from_arrays(sign_bits(matrix), dim, mask=mask)
    values = matrix.astype(np.float16 if dtype == "float16" else np.float32, copy=False)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim, mask=mask)


def sign_bits(matrix: np.ndarray) -> pa.BooleanArray:
    """``matrix > 0`` flattened into an Arrow boolean array, built from the packed bits without a per-value copy."""
    bits = np.ascontiguousarray(matrix > 0).reshape(-1)
    packed = np.packbits(bits, bitorder="little")  # Arrow's validity/boolean bit order
    return pa.BooleanArray.from_buffers(pa.bool_(), bits.size, [None, pa.py_buffer(packed.tobytes())])


def int8_scale(max_abs: np.ndarray) -> np.ndarray:
    """Per-dimension scale from per-dimension maxima; a dimension that is always 0 gets scale 1 (any works)."""
    max_abs = np.asarray(max_abs, dtype=np.float64)
    return np.where(max_abs > 0, max_abs / INT8_MAX, 1.0).astype(np.float32)


def quantize_int8(matrix: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``round(x / scale)`` clipped to [-127, 127] (only values above the calibrated maximum are clipped)."""
    values = np.nan_to_num(matrix.astype(np.float32, copy=False), nan=0.0)  # +-inf clip to +-127
    return np.clip(np.rint(values / scale), -INT8_MAX, INT8_MAX).astype(np.int8)


def finite_max_abs(matrix: np.ndarray) -> np.ndarray:
    """Per-dimension max |x| over finite values (an inf must not turn every other value of its dimension to 0)."""
    magnitude = np.abs(matrix.astype(np.float32, copy=False))
    return np.where(np.isfinite(magnitude), magnitude, 0.0).max(axis=0, initial=0.0)


# ---------------------------------------------------------------------------------------------- decode


def decode(column: pa.Array | pa.ChunkedArray, encoding: dict[str, Any] | None = None) -> np.ndarray:
    """A ``fixed_size_list`` column as an [n, dim] float32 matrix, whatever its storage dtype (null rows: zeros).

    ``encoding`` is the column's entry in the features metadata (``Features.vector_encoding``); int8 needs it.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    dim = column.type.list_size
    value_type = column.type.value_type
    # Every slot, null rows' included (flatten() drops them, and rows would no longer line up with a mask).
    flat = column.values.slice(column.offset * dim, len(column) * dim)
    if pa.types.is_boolean(value_type):
        signs = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
        return np.where(signs, 1.0, -1.0).astype(np.float32) / np.float32(np.sqrt(dim))
    if pa.types.is_int8(value_type):
        scale = _stored_scale(encoding, dim)
        return flat.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32) * scale
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def _stored_scale(encoding: dict[str, Any] | None, dim: int) -> np.ndarray:
    scale = (encoding or {}).get("scale")
    if not isinstance(scale, list) or len(scale) != dim or not all(isinstance(s, (int, float)) for s in scale):
        raise InputError(
            f"an int8 vector column needs its per-dimension scale ({dim} numbers) in the features metadata "
            f"('{META_KEY}'); it is missing or damaged, so the vectors cannot be read back"
        )
    values = np.asarray(scale, dtype=np.float32)
    if not np.isfinite(values).all() or (values <= 0).any():
        raise InputError(f"the stored int8 scale holds non-positive or non-finite values ('{META_KEY}' metadata)")
    return values


def float_array(column: pa.Array | pa.ChunkedArray, encoding: dict[str, Any] | None = None) -> pa.Array:
    """A vector column (nulls kept) as ``fixed_size_list<float32>``: for readers that pass Arrow arrays on."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    value_type = column.type.value_type
    if pa.types.is_floating(value_type) and not pa.types.is_float16(value_type):
        return column
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    dim = column.type.list_size
    matrix = np.zeros((len(column), dim), dtype=np.float32)
    if valid.any():
        matrix[valid] = decode(column.filter(pa.array(valid)), encoding)
    mask = pa.array(~valid) if not valid.all() else None
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim, mask=mask)


# ---------------------------------------------------------------------------------------------- merge


class MergeEncoder:
    """Turns the float32 int8-mode parts into the final int8 columns; the identity for every other dtype."""

    def __init__(self, scales: dict[str, np.ndarray]):
        self.scales = scales

    def schema(self, schema: pa.Schema) -> pa.Schema:
        for name in self.scales:
            i = schema.get_field_index(name)
            schema = schema.set(i, schema.field(i).with_type(pa.list_(pa.int8(), schema.field(i).type.list_size)))
        return schema

    def apply(self, table: pa.Table) -> pa.Table:
        for name, scale in self.scales.items():
            column = table.column(name).combine_chunks()
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            quantised = quantize_int8(decode(column), scale) * valid[:, None]  # null rows: zeros under the mask
            mask = pa.array(~valid) if not valid.all() else None
            array = pa.FixedSizeListArray.from_arrays(pa.array(quantised.reshape(-1)), len(scale), mask=mask)
            table = table.set_column(table.schema.get_field_index(name), name, array)
        return table


def _stored_dtype(meta: dict[str, Any]) -> str:
    return (meta.get("config") or {}).get("dtype", "float32")


def _embedding_columns(meta: dict[str, Any]) -> list[str]:
    recorded = meta.get("columns") or []
    # Since the one embed driver, "columns" records the input's names too, the vectors under "embeddings".
    return list(recorded.get("embeddings") or []) if isinstance(recorded, dict) else list(recorded)


def int8_columns(meta: dict[str, Any]) -> list[str]:
    """The embedding columns that the merge quantises to int8 (none unless the config's dtype is int8)."""
    return _embedding_columns(meta) if _stored_dtype(meta) == "int8" else []


def file_maxima(file: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-dimension max |x| of each float vector column of one committed part/shard (absent: all rows null)."""
    if not columns:
        return {}
    table = pq.read_table(file, columns=list(columns))
    maxima = {}
    for name in columns:
        column = table.column(name).drop_null()
        if len(column):
            maxima[name] = finite_max_abs(decode(column))
    return maxima


def merge_encoder_from(
    maxima: Sequence[dict[str, np.ndarray]], dims: dict[str, int], meta: dict[str, Any]
) -> tuple[MergeEncoder, dict[str, Any]]:
    """The encoder and ``meta`` with the encodings recorded, from each part's :func:`file_maxima` (any order).

    Split from :func:`merge_encoder` so that the maxima can be computed where the parts are (Ray workers) and
    only these few numbers per part reach the process that decides the scale.
    """
    dtype, columns = _stored_dtype(meta), _embedding_columns(meta)
    if dtype not in ("int8", "binary") or not columns:
        return MergeEncoder({}), meta
    entries: dict[str, dict[str, Any]] = {name: {"dtype": dtype} for name in columns}
    scales: dict[str, np.ndarray] = {}
    if dtype == "int8":
        for name in columns:
            found = [m[name] for m in maxima if name in m]
            overall = np.maximum.reduce(found) if found else np.zeros(dims.get(name, 0), dtype=np.float32)
            scales[name] = int8_scale(overall)
            entries[name]["scale"] = [float(s) for s in scales[name]]
    return MergeEncoder(scales), {**meta, META_KEY: entries}


def vector_dims(schema: pa.Schema, columns: Sequence[str]) -> dict[str, int]:
    """The list size of each of ``columns`` in ``schema`` (the vector dimension)."""
    return {name: schema.field(name).type.list_size for name in columns if name in schema.names}


def merge_encoder(files: Sequence[Path], meta: dict[str, Any]) -> tuple[MergeEncoder, dict[str, Any]]:
    """The encoder for merging ``files`` (committed parts) and ``meta`` with the columns' encodings recorded.

    For int8 this is the first of two passes: the per-dimension maxima of every embedding column over all parts.
    """
    columns = int8_columns(meta)
    maxima = [file_maxima(f, columns) for f in files] if columns else []
    dims = vector_dims(pq.read_schema(files[0]), columns) if files and columns else {}
    return merge_encoder_from(maxima, dims, meta)


def stored_bytes_per_vector(dim: int, dtype: str) -> float:
    """Payload bytes of one vector (before Parquet's own encoding and compression)."""
    return {"float32": 4.0 * dim, "float16": 2.0 * dim, "int8": float(dim), "binary": dim / 8}[dtype]


__all__ = [
    "META_KEY",
    "VECTOR_DTYPES",
    "MergeEncoder",
    "decode",
    "float_array",
    "int8_scale",
    "file_maxima",
    "int8_columns",
    "merge_encoder",
    "merge_encoder_from",
    "vector_dims",
    "part_array",
    "quantize_int8",
    "sign_bits",
    "stored_bytes_per_vector",
]
