"""``--where``: which rows of an index match a SQL condition on its stored columns (evaluated by DuckDB).

The condition is DuckDB SQL over the id map (``id`` and the stored columns), e.g.
``section = 'games' AND year >= 2020``. DuckDB parses and evaluates it on the Arrow table in place; the result is
a mask of FAISS rows that search turns into an ``IDSelector`` (:mod:`embedkit.index.live`). The connection has
no access to files or extensions, and the text must be one condition: ``serve`` passes a client's ``where``
here, so it must not reach anything but the id map.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, InputError

ROW = "__embedkit_row"  # FAISS row number, added beside the stored columns for the query
MAX_WHERE_CHARS = 2000


def where_mask(ids: pa.Table, where: str) -> np.ndarray:
    """Boolean mask over the rows of ``ids`` (the id map) where ``where`` holds (NULL counts as false).

    Raises:
        InputError: the condition names a column the index does not store (the message lists them).
        ConfigError: not a single valid condition (syntax, types), or too long.
    """
    import duckdb

    stored = ", ".join(ids.column_names)
    if not isinstance(where, str) or not where.strip():
        raise ConfigError("--where is empty; give a condition such as \"section = 'games'\"")
    if len(where) > MAX_WHERE_CHARS:
        raise ConfigError(f"--where is {len(where):,} characters long; at most {MAX_WHERE_CHARS:,}")
    sql = f"SELECT {ROW} FROM rows WHERE ({where})"
    try:
        if len(duckdb.extract_statements(sql)) != 1:
            raise ConfigError(f"--where {where!r} is not one condition")
        con = duckdb.connect(config={"enable_external_access": False, "lock_configuration": True})
        try:
            con.register("rows", ids.append_column(ROW, pa.array(np.arange(ids.num_rows, dtype=np.int64))))
            rows = con.execute(sql).fetchnumpy()[ROW]
        finally:
            con.close()
    except duckdb.BinderException as exc:
        message = str(exc).splitlines()[0]
        if "not found" in message and "column" in message.lower():
            raise InputError(
                f"--where {where!r}: {message.removeprefix('Binder Error: ')} The index stores: {stored} "
                "(keep more columns with `index build --store COLUMN`)"
            ) from None
        raise ConfigError(f"--where {where!r}: {message}") from None
    except duckdb.Error as exc:
        raise ConfigError(f"--where {where!r}: {str(exc).splitlines()[0]} (columns: {stored})") from None
    mask = np.zeros(ids.num_rows, dtype=bool)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= ids.num_rows):  # a condition that smuggled in other rows
        raise ConfigError(f"--where {where!r} is not a condition on the stored columns")
    mask[rows] = True
    return mask
