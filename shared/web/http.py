"""What every FastAPI service shares: health, readiness, metrics, body limit, and error shapes."""

from __future__ import annotations

import email.message
import json
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import instrument
from shared.store import StoreUnavailableError


class RequestBody(BaseModel):
    """Every request body: a field it does not know (a misspelt `"topk"`) is a 422 naming it, never
    silently ignored."""

    model_config = ConfigDict(extra="forbid")


def is_json(content_type: str | None) -> bool:
    """FastAPI's own rule for which bodies it parses as JSON: application/json and application/*+json."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json"
                                                                 or subtype.endswith("+json"))


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value (RFC 8259 has no NaN or infinity): send a finite number "
                     "or null")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is beyond the largest a double holds (about 1.8e308)")
    return value


def _bounded_int(text: str) -> int:
    digits, limit = len(text.lstrip("-")), sys.get_int_max_str_digits()
    if limit and digits > limit:
        raise ValueError(f"an integer of {digits} digits: at most {limit} digits are read")
    return int(text)


def json_problem(body: bytes) -> str | None:
    """Why this JSON body would make the error path fail, or None.

    Python's parser takes NaN, Infinity and numbers that overflow to infinity, which no JSON
    encoder may write back: a validation error that echoes them, or an answer that carries them,
    fails in Starlette's strict `JSONResponse` (a 500). Nesting too deep for the parser, integers
    past Python's digit limit and bytes that are not UTF-8 end as a 400 that says nothing of why.
    A syntax error is left to FastAPI, whose 422 says where it is.
    """
    try:
        json.loads(body, parse_constant=_no_constant, parse_float=_finite, parse_int=_bounded_int)
    except json.JSONDecodeError:
        return None
    except UnicodeDecodeError as exc:
        return f"the body is not UTF-8 text (byte {exc.start} cannot be read): send JSON encoded as UTF-8"
    except RecursionError:
        return "the JSON is nested too deeply to read: flatten it"
    except ValueError as exc:
        return str(exc)
    return None


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, and JSON that the services cannot answer
    about with 422 (`json_problem`), before any route reads or parses them.

    A declared Content-Length is checked up front; a chunked body (no length) and every JSON body
    are read here, at most `limit` bytes of them, and handed on to the route only when they pass.
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
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self.refuse(scope, receive, send)
            return
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        has_body = (length is not None and length != b"0") or b"transfer-encoding" in headers
        if has_body and encoding not in ("", "identity"):
            # The services read bodies as sent; a compressed one would otherwise be refused as
            # "not UTF-8", which points the client at the wrong fix.
            await JSONResponse({"detail": f"the body must not be compressed (Content-Encoding: "
                                          f"{encoding[:40]}): send it uncompressed, as UTF-8 JSON"},
                               status_code=415)(scope, receive, send)
            return
        json_body = is_json(headers.get(b"content-type", b"").decode("latin-1"))
        if length is not None and not json_body:
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
        body = b"".join(chunks)
        problem = json_problem(body) if json_body and body and first is None else None
        if problem is not None:
            await JSONResponse({"detail": f"the body is not JSON the service can read: {problem}"},
                               status_code=422)(scope, receive, send)
            return
        buffered: list[Message] = [first or {"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return buffered.pop() if buffered else await receive()

        await self.app(scope, replay, send)


def printable(value: Any) -> Any:
    """`value` with what strict JSON cannot carry (non-finite numbers, bytes, lone surrogates,
    exception objects) written as text, so that a validation error can always echo its input."""
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, BaseException):
        return str(value)
    return value


async def refuse_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with an echo that cannot fail; a body not sent as JSON is a 415 that says so."""
    content_type = request.headers.get("content-type")
    if isinstance(exc.body, bytes) and not is_json(content_type):
        return JSONResponse({"detail": f"the body must be JSON sent with Content-Type: application/json "
                                       f"(got {content_type or 'no Content-Type'})"}, status_code=415)
    return JSONResponse({"detail": jsonable_encoder(printable(exc.errors()))}, status_code=422)


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
            for operation in (op for item in schema.get("paths", {}).values() for op in item.values()):
                if isinstance(operation, dict) and "requestBody" in operation:
                    operation.setdefault("responses", {}).setdefault("415", {
                        "description": "The body was not sent as JSON (Content-Type: application/json)."})
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


async def store_answers(app: FastAPI) -> bool:
    """The store check in every service's `/ready`: False until the lifespan has opened the store,
    and while it does not answer."""
    try:
        await app.state.store.ping()
        return True
    except (StoreUnavailableError, AttributeError):
        return False


def add_common(app: FastAPI, service: str, readiness: Callable[[], Awaitable[dict[str, bool]]],
               details: Callable[[], dict[str, Any]] | None = None) -> None:
    """`/health` says the process is alive; `/ready` says its dependencies answer (and `details`,
    what is still under way without holding readiness back); bodies are bounded, and every refused
    body is a 4xx that says why."""
    app.add_middleware(BodyLimit, limit=app.state.settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, refuse_invalid)  # type: ignore[arg-type]
    instrument(app, service)
    document_refusals(app)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        checks = await readiness()
        ok = all(checks.values())
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        if details is not None:
            body["details"] = details()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.exception_handler(StoreUnavailableError)
    async def store_down(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the store is unavailable, retry later ({exc})"}, status_code=503,
            headers={"Retry-After": "5"},
        )
