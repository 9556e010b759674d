"""What every FastAPI service shares: health, readiness, metrics, body limit, and error shapes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import instrument
from shared.store import StoreUnavailableError


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413 before any route reads or parses them.

    A declared Content-Length is checked up front; a chunked body (no length) is read here, at
    most `limit` bytes of it, and handed on to the route only when it fits.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"the request body is larger than {self.limit} bytes "
                                           "(EDURANKER_MAX_BODY_BYTES): send less, or split it into "
                                           "several requests"}, status_code=413,
                                headers={"Connection": "close"})
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                await self.refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server delivers exactly `length` bytes
            return
        chunks: list[bytes] = []
        size, more, first = 0, True, None
        while more:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # a disconnect: let the route see it
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self.refuse(scope, receive, send)
                return
            more = message.get("more_body", False)
        buffered: list[Message] = [first or {"type": "http.request", "body": b"".join(chunks),
                                             "more_body": False}]

        async def replay() -> Message:
            return buffered.pop() if buffered else await receive()

        await self.app(scope, replay, send)


def document_refusals(app: FastAPI) -> None:
    """Routes answer 422 with a message string too ("document ids must be unique..."), beside
    FastAPI's list of field errors: the published schema says both, so clients can rely on it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if error is not None:
                error["properties"]["detail"] = {"title": "Detail", "anyOf": [
                    error["properties"]["detail"], {"type": "string", "description": "What to change."}]}
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def add_common(app: FastAPI, service: str, readiness: Callable[[], Awaitable[dict[str, bool]]]) -> None:
    """`/health` says the process is alive; `/ready` says its dependencies answer; bodies are bounded."""
    app.add_middleware(BodyLimit, limit=app.state.settings.max_body_bytes)
    instrument(app, service)
    document_refusals(app)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        checks = await readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.exception_handler(StoreUnavailableError)
    async def store_down(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the store is unavailable, retry later ({exc})"}, status_code=503,
            headers={"Retry-After": "5"},
        )
