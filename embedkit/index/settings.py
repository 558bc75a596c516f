"""Settings that travel: which columns of the features an index stores, and the text / id columns search reads.

``embed`` records the input's column names in the features metadata (``columns: {text, id, keep}``); the build
copies the text and id names into ``index.json`` (``input_columns``) and stores the text itself by default, so
search shows text instead of bare ids and ``search --queries`` reads the same text column without being told.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..store import Features


def choose_store(features: Features, store: Sequence[str] | None, store_text: bool) -> tuple[list[str], str | None]:
    """Columns kept beside the ids: the text column (unless ``store_text`` is off), then ``store``.

    Returns the columns and the stored text column (None when no text is stored).
    """
    extra = list(store or [])
    if len(set(extra)) != len(extra):
        raise ConfigError(f"--store names a column twice: {', '.join(extra)}")
    if "id" in extra:
        raise ConfigError("--store id: the id is always stored; name other columns")
    text = features.text_column if store_text else None
    columns = ([text] if text else []) + [c for c in extra if c != text]
    features.require_columns(columns)
    if text is None and store_text and extra:
        # The caller named the columns to show; one of them may well be the text (e.g. --store body).
        text = next((c for c in extra if c in features.text_columns), None)
    return columns, text


def store_note(features: Features, store: list[str], store_text: bool) -> list[str]:
    """Say so when search will show bare ids although the file has text columns (e.g. kept as ``body``)."""
    if store or not store_text or not features.text_columns:
        return []
    return [
        "search results will show ids only: the features hold no 'text' column to store for display; name one "
        f'with --store COLUMN (store = ["COLUMN"] in a pipeline\'s index step); text columns here: '
        f"{', '.join(features.text_columns)}"
    ]


def query_columns(meta: dict[str, Any], text_column: str | None, id_column: str | None) -> tuple[str, str | None]:
    """The queries' text and id columns: as given, else as recorded at build (the input's), else ``text``."""
    recorded = meta.get("input_columns") or {}
    return text_column or recorded.get("text") or "text", id_column if id_column is not None else recorded.get("id")


def open_queries(meta: dict[str, Any], queries: str | Path, text_column: str | None, id_column: str | None):
    """A ``Source`` over a queries file with the columns of :func:`query_columns`.

    A recorded id column the queries do not have is left out (query ids are optional); a recorded text column
    they do not have is an InputError that says where the name came from and how to name another.
    """
    from ..sources import Source

    text, ident = query_columns(meta, text_column, id_column)
    if id_column is None and ident is not None:
        try:
            return Source(queries, text_column=text, id_column=ident)
        except InputError:
            ident = None  # the recorded id column is not in this file: fall through without it
    try:
        return Source(queries, text_column=text, id_column=ident)
    except InputError as exc:
        if text_column is None and text != "text":
            raise InputError(
                f"{exc} (the index was built from text in column {text!r}; name the queries' text column with "
                "--text-column)"
            ) from exc
        raise
