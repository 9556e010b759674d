"""What every FastAPI service shares: health, readiness, metrics, and error shapes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.metrics import instrument
from shared.store import StoreUnavailableError


def add_common(app: FastAPI, service: str, readiness: Callable[[], Awaitable[dict[str, bool]]]) -> None:
    """`/health` says the process is alive; `/ready` says its dependencies answer."""
    instrument(app, service)

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
