"""Deciding, row by row, whether a value can be embedded, and recording why not.

Statuses written to the ``status`` column:
    ok          embedded as given
    repaired    embedded after invalid UTF-8 bytes / lone surrogates were replaced by U+FFFD
    cut         embedded from the start of a text too long to read whole: only the tokens the long-text mode
                uses were tokenised (truncate: max_length; chunk: MAX_CHUNK_WINDOWS windows). ``truncated`` is
                true and ``n_tokens`` counts the tokens read, not the whole text's (which were never counted).
    empty       empty or whitespace-only text (null embedding)
    null        None, NaN or a missing value (null embedding)
    not_string  a number, list or other non-text value (null embedding)
    malformed   the record itself could not be parsed (e.g. a broken JSONL line; null embedding)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

CUT_STATUS = "cut"
EMBEDDED_STATUSES = ("ok", "repaired", CUT_STATUS)
STATUSES = (*EMBEDDED_STATUSES, "empty", "null", "not_string", "malformed")

_SURROGATES = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """``text`` with every lone surrogate (an invalid UTF-8 byte read with surrogateescape) as U+FFFD."""
    return _SURROGATES.sub("\ufffd", text)


@dataclass(frozen=True)
class CheckedText:
    text: str | None  # None when the row cannot be embedded
    status: str
    error: str | None = None


def check_text(value: object) -> CheckedText:
    """Classify one input value; never raises."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return CheckedText(None, "null", "missing text")
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas missing markers, without importing pandas
        return CheckedText(None, "null", "missing text")
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="surrogateescape")
    if not isinstance(value, str):
        return CheckedText(None, "not_string", f"expected text, got {type(value).__name__}")
    status, error = "ok", None
    if _SURROGATES.search(value):
        # Readers decode with surrogateescape, so invalid bytes arrive here as surrogates; JSON can carry
        # lone surrogates too. Neither can be encoded by a tokenizer, so both become U+FFFD, on record.
        value = _SURROGATES.sub("\ufffd", value)
        status, error = "repaired", "invalid UTF-8 or lone surrogates replaced by U+FFFD"
    if not value.strip():
        return CheckedText(None, "empty", "empty or whitespace-only text")
    return CheckedText(value, status, error)
