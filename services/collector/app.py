"""Collector service: validates feedback against the logged inference, stores it, relays it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.collector.intake import FeedbackWriter, InferenceCache, Intake
from services.collector.outbox import OutboxRelay
from services.collector.routes import router
from shared.http import add_common, store_answers
from shared.settings import Settings, get_settings
from shared.store import store_from


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await store_from(settings)
        relay = OutboxRelay(store, settings)
        writer = FeedbackWriter(store)
        app.state.store, app.state.relay = store, relay
        app.state.intake = Intake(InferenceCache(store), writer, relay)
        writer.start()
        relay.start()
        try:
            yield
        finally:
            await writer.close()
            await relay.close()
            await store.close()

    app = FastAPI(title="EduRanker collector", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.include_router(router)

    async def readiness() -> dict[str, bool]:
        """Only the store: with the broker down, feedback is still accepted (the outbox waits)."""
        return {"store": await store_answers(app)}

    add_common(app, "collector", readiness)
    return app
