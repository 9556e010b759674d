"""Collector service: validates feedback and interactions against the logged inference, stores them,
relays their events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.collector.intake import ActionWriter, InferenceCache, Intake
from services.collector.outbox import OutboxRelay
from services.collector.routes import router
from shared import metrics
from shared.settings import Settings, get_settings
from shared.store import store_from
from shared.web.http import add_common, store_answers


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await store_from(settings)
        relay = OutboxRelay(store, settings)
        for kind in ("open", "return"):  # every series exists from the start (the dashboard reads rates)
            for outcome in ("accepted", "duplicate", "rejected"):
                metrics.INTERACTIONS.labels(kind, outcome)
        intake = Intake(store, InferenceCache(store),
                        ActionWriter("feedback-writer", store.record_feedback_many),
                        ActionWriter("interaction-writer", store.record_interactions), relay)
        app.state.store, app.state.relay, app.state.intake = store, relay, intake
        for writer in intake.writers:
            writer.start()
        relay.start()
        try:
            yield
        finally:
            for writer in intake.writers:
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
