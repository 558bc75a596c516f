"""Request bodies, validated by pydantic before a route runs (a wrong type is a 422, never a coerced value).

Strict types: ``"3"`` is not a k of 3 and ``1.0`` is not token id 1. Unknown fields are refused, so a misspelt
option (``dimension``) is an error instead of being silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..index import DEFAULT_K

TokenIds = list[StrictInt]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(_Body):
    """OpenAI's ``POST /v1/embeddings`` body.

    ``input`` is a text, a list of texts, one token array (list of ints) or a list of token arrays. Token ids
    are the model's own content tokens; the special tokens the model adds around a text are added here too.
    ``dimensions`` keeps the first N components and renormalises them: meaningful only for models trained so
    that a prefix is itself an embedding (Matryoshka); for GPT-2 hidden states it is plain truncation.
    """

    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: StrictStr | None = None


class SearchRequest(_Body):
    """``POST /v1/search``: one query or a list, hits per query, and the index (optional when one is loaded)."""

    query: StrictStr | list[StrictStr]
    k: StrictInt = DEFAULT_K
    index: StrictStr | None = None
    where: StrictStr | None = Field(default=None, max_length=2000)  # SQL condition on stored columns (DuckDB)


class PredictRequest(_Body):
    """``POST /v1/predict``: texts to label, and the classifier (optional when one is loaded)."""

    input: StrictStr | list[StrictStr]
    classifier: StrictStr | None = None
