"""Every error the server answers, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

OpenAI's clients read ``error.message`` into their exceptions, so a client sees the same text a curl user does.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, EmbedkitError, IncompatibleError, InputError
from .batcher import QueueFullError

log = logging.getLogger(__name__)

INVALID = "invalid_request_error"
RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An answer other than 200, raised anywhere in a route."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        type: str = INVALID,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type, param
        self.headers = headers or {}


def error_body(message: str, code: str, type: str = INVALID, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(error.message, error.code, error.type, error.param), status_code=error.status, headers=error.headers
    )


def overloaded(message: str) -> APIError:
    return APIError(
        503,
        f"{message}; retry in {RETRY_AFTER_SECONDS}s",
        "overloaded",
        type="server_error",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """pydantic's first complaint, with the field path a person would write (``input[2]``)."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # A union of list types reports its members ('list[str]', 'list[int]'...); they are not field names.
    loc = [part for part in loc if not part.startswith(("list[", "str", "int", "function-"))]
    param = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".") or None
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{param + ': ' if param else ''}{first.get('msg', 'invalid value')}{more}", param


def install(app: FastAPI) -> None:
    """Route every failure (ours, pydantic's, Starlette's, the library's) through the one shape."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(APIError(422, message, "invalid_value", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(APIError(exc.status_code, str(exc.detail), code))

    @app.exception_handler(QueueFullError)
    async def _full(request: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(overloaded(str(exc)))

    @app.exception_handler(EmbedkitError)
    async def _library(request: Request, exc: EmbedkitError) -> JSONResponse:
        # The library's typed errors are the caller's input or settings; anything else is ours (500).
        if isinstance(exc, (InputError, ConfigError, IncompatibleError)):
            return error_response(APIError(422, str(exc), "invalid_value"))
        log.error("request failed: %s", exc)
        return error_response(APIError(500, str(exc), "internal_error", type="server_error"))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(
            APIError(500, f"internal error: {type(exc).__name__}", "internal_error", type="server_error")
        )
