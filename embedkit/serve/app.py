"""The ASGI app: routes plus three thin middlewares (metrics, API key, body size), all in OpenAI's error shape.

The middlewares are plain ASGI rather than Starlette's BaseHTTPMiddleware: they sit on every request, and the
plain form adds no task or stream copying per request.
"""

from __future__ import annotations

import hmac
import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import errors
from .errors import error_body
from .metrics import Metrics
from .registry import Services
from .routes import router
from .settings import ServeSettings

OPEN_PATHS = ("/healthz", "/")  # the page is static HTML holding no data; it asks for the key itself


async def _reply(
    send,
    status: int,
    message: str,
    code: str,
    type: str = errors.INVALID,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(error_body(message, code, type)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts every answer by route and status, and times it."""

    def __init__(self, app, metrics: Metrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        # Unknown paths share one label, so scanning random URLs cannot grow the metric without bound.
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def capture(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.metrics.observe_request(route, status[0], started)


class ApiKeyMiddleware:
    """With a key set, every route but the open ones needs ``Authorization: Bearer KEY`` (401 otherwise)."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):  # constant time: no guessing the key byte by byte
            message = "missing or wrong API key: send 'Authorization: Bearer KEY'"
            return await _reply(
                send, 401, message, "invalid_api_key", "authentication_error", [(b"www-authenticate", b"Bearer")]
            )
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a body over the limit: at once from Content-Length, else as soon as the stream passes it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"the request body is over the {self.max_bytes:,}-byte limit"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _reply(send, 413, too_big, "request_too_large")
        # Chunked bodies carry no length: read them here, up to the limit, and hand the app the whole body.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _reply(send, 413, too_big, "request_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for the disconnect, as the server would say it
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def create_app(services: Services, settings: ServeSettings, metrics: Metrics) -> FastAPI:
    """An app over already-loaded ``services``; their model workers start and stop with the app's lifespan.

    Stopping runs after uvicorn has finished the requests in flight (its graceful shutdown on SIGTERM), so the
    workers are still there to answer them.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services.start()
        try:
            yield
        finally:
            services.close()

    # FastAPI's /docs page pulls Swagger UI from a CDN, which a server meant for closed networks cannot rely on;
    # the schema itself stays at /openapi.json.
    app = FastAPI(title="embedkit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.services, app.state.settings, app.state.metrics = services, settings, metrics
    app.include_router(router)
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    # The router's own paths: FastAPI may mount an included router as one opaque route.
    routes = {getattr(r, "path", "") for r in [*router.routes, *app.routes]} - {""}
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)  # added last: outermost
    return app
