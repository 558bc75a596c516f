"""The HTTP routes: OpenAI-compatible embeddings, search, predict, model list, health, metrics, the web page."""

from __future__ import annotations

import asyncio
import base64
import functools
from typing import Any, TypeVar, cast

import numpy as np
from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .errors import APIError
from .page import PAGE
from .registry import Embedder, Services
from .schemas import EmbeddingsRequest, PredictRequest, SearchRequest
from .settings import Limits

router = APIRouter()
T = TypeVar("T")


def _state(request: Request) -> tuple[Services, Limits]:
    return request.app.state.services, request.app.state.settings.limits


def _pick(found: dict[str, T], name: str | None, what: str, flag: str) -> tuple[str, T]:
    """The artefact a request names, or the only one loaded when it names none."""
    if name is None:
        if len(found) == 1:
            return next(iter(found.items()))
        if not found:
            raise APIError(404, f"no {what} is loaded: start the server with {flag}", f"{what}_not_found")
        raise APIError(
            422,
            f"{len(found)} {what}s are loaded: name one in '{what}' ({', '.join(found)})",
            "invalid_value",
            param=what,
        )
    if name not in found:
        known = ", ".join(found) or "none"
        raise APIError(404, f"no {what} named {name!r} is loaded (loaded: {known})", f"{what}_not_found", param=what)
    return name, found[name]


def _texts(value: str | list[str], limits: Limits, param: str) -> list[str]:
    """One text or a list, checked against the limits before any model work."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise _unprocessable(param, f"{param} is an empty list: give at least one text", "empty_input")
    if len(texts) > limits.max_inputs:
        message = f"{param} holds {len(texts)} items; at most {limits.max_inputs} per request"
        raise _unprocessable(param, message, "too_many_inputs")
    for i, text in enumerate(texts):
        where = f"{param}[{i}]" if not isinstance(value, str) else param
        if len(text) > limits.max_chars:
            message = f"{where} has {len(text):,} characters; at most {limits.max_chars:,}"
            raise _unprocessable(where, message, "input_too_long")
        if not text.strip():
            raise _unprocessable(where, f"{where} is empty or whitespace only", "empty_input")
    return texts


def _unprocessable(param: str, message: str, code: str) -> APIError:
    """A 422 naming the request field at fault (OpenAI's error shape: message, code, param)."""
    return APIError(422, message, code, param=param)


def _token_arrays(value: list, limits: Limits, vocab: int) -> list[list[int]]:
    arrays = [value] if not value or isinstance(value[0], int) else value
    if len(arrays) > limits.max_inputs:
        raise APIError(
            422,
            f"input holds {len(arrays)} token arrays; at most {limits.max_inputs} per request",
            "too_many_inputs",
            param="input",
        )
    for i, ids in enumerate(arrays):
        if not ids:
            raise _unprocessable(f"input[{i}]", f"input[{i}] is an empty token array", "empty_input")
        if len(ids) > limits.max_chars:
            raise APIError(
                422,
                f"input[{i}] has {len(ids):,} tokens; at most {limits.max_chars:,}",
                "input_too_long",
                param=f"input[{i}]",
            )
        if min(ids) < 0 or max(ids) >= vocab:
            raise APIError(
                422,
                f"input[{i}] holds token ids outside this model's vocabulary 0..{vocab - 1}",
                "invalid_value",
                param=f"input[{i}]",
            )
    return arrays


def _embedding_model(services: Services, name: str | None) -> tuple[str, Embedder]:
    if name is None and len(services.embedders) == 1:
        return next(iter(services.models)), services.embedders[0]
    return _pick(services.models, name, "model", "--model, --index or --classifier")


def _truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` components, renormalised to unit length (OpenAI's ``dimensions``)."""
    if dimensions > vectors.shape[1]:
        raise APIError(
            422,
            f"dimensions {dimensions} is more than this model's {vectors.shape[1]}",
            "invalid_value",
            param="dimensions",
        )
    cut = vectors[:, :dimensions]
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request) -> JSONResponse:
    services, limits = _state(request)
    name, embedder = _embedding_model(services, body.model)
    value = body.input
    if isinstance(value, list) and value and not isinstance(value[0], str):
        embedded = await embedder.batcher.embed_tokens(_token_arrays(value, limits, embedder.extractor.vocab_size))
    elif isinstance(value, list) and not value:
        raise _unprocessable("input", "input is an empty list: give at least one text", "empty_input")
    else:
        embedded = await embedder.batcher.embed_texts(_texts(cast("str | list[str]", value), limits, "input"))
    vectors = embedded.vectors if body.dimensions is None else _truncate(embedded.vectors, body.dimensions)
    tokens = int(embedded.n_tokens.sum())
    # JSONResponse directly: FastAPI's generic encoder would walk every float of every vector in Python.
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def _on(executor, fn, *args):
    """Run ``fn`` on the artefact's own thread: off the event loop, and always the same thread."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


@router.post("/v1/search")
async def search(body: SearchRequest, request: Request) -> JSONResponse:
    services, limits = _state(request)
    queries = _texts(body.query, limits, "query")
    if not 1 <= body.k <= limits.max_k:
        raise _unprocessable("k", f"k must be between 1 and {limits.max_k}, got {body.k}", "invalid_value")
    name, served = _pick(services.indexes, body.index, "index", "--index DIR")
    embedded = await served.embedder.batcher.embed_texts(queries)
    search = functools.partial(served.index.search_vectors, where=body.where)  # --where, filtered inside FAISS
    result = await _on(served.executor, search, embedded.vectors, body.k)
    data = [{"query": q, "hits": result.hits(i)} for i, q in enumerate(queries)]
    return JSONResponse(
        jsonable_encoder(
            {"object": "list", "index": name, "metric": served.index.metric, "data": data, "notes": result.notes}
        )
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@router.post("/v1/predict")
async def predict(body: PredictRequest, request: Request) -> JSONResponse:
    services, limits = _state(request)
    texts = _texts(body.input, limits, "input")
    name, served = _pick(services.classifiers, body.classifier, "classifier", "--classifier DIR")
    embedded = await served.embedder.batcher.embed_texts(texts)
    labels, proba = await _on(served.executor, served.model.predict_vectors, embedded.vectors)
    classes = served.model.classes
    data = []
    for i, label in enumerate(labels):
        row: dict[str, Any] = {"index": i, "label": _plain(label)}
        if proba is not None:
            row["probabilities"] = {str(c): float(p) for c, p in zip(classes, proba[i])}
        data.append(row)
    return JSONResponse(jsonable_encoder({"object": "list", "classifier": name, "data": data}))


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    services, _ = _state(request)
    return JSONResponse(jsonable_encoder({"object": "list", "data": services.describe()}))


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)
