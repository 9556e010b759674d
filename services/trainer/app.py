"""Trainer service: the Kafka worker plus a small admin API (manual trigger, versions, runs)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request

from services.trainer.worker import Trainer, consume
from shared.events import TRAINING_REQUESTED_TOPIC, TrainingRequestedEvent
from shared.http import add_common
from shared.kafka import ensure_topics, make_producer, publish
from shared.settings import Settings, get_settings
from shared.store import StoreUnavailableError, open_store

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/train", status_code=202)
async def request_training(request: Request) -> dict:
    """Ask for a training run now (reason `manual`), without waiting for the threshold."""
    event = TrainingRequestedEvent(reason="manual")
    settings: Settings = request.app.state.settings

    def send() -> None:
        producer = make_producer(settings)
        try:
            publish(producer, TRAINING_REQUESTED_TOPIC, event, key="training")
        finally:
            producer.close(5)

    await asyncio.to_thread(send)
    return {"requested": True, "event_id": event.event_id}


@router.get("/versions")
async def versions(request: Request) -> dict:
    store = request.app.state.store
    trainer: Trainer = request.app.state.trainer
    return {"champion": trainer.registry.champion(),
            "versions": [v.model_dump(mode="json") for v in await store.list_model_versions()]}


@router.get("/runs")
async def runs(request: Request, limit: int = 20) -> dict:
    items = await request.app.state.store.list_training_runs(limit=max(1, min(limit, 200)))
    return {"runs": [r.model_dump(mode="json") for r in items]}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(ensure_topics, settings)
        store = await open_store(settings.store_url)
        trainer = Trainer(settings, store)
        await trainer.recover()
        app.state.store, app.state.trainer = store, trainer
        stop, joined = threading.Event(), threading.Event()
        app.state.joined = joined
        thread = threading.Thread(target=consume, name="trainer-consumer", daemon=True,
                                  args=(trainer, settings, asyncio.get_running_loop(), stop, joined))
        thread.start()
        try:
            yield
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 30)
            await store.close()

    app = FastAPI(title="EduRanker trainer", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.include_router(router)

    async def readiness() -> dict[str, bool]:
        try:
            await app.state.store.ping()
            store_ok = True
        except (StoreUnavailableError, AttributeError):
            store_ok = False
        joined = getattr(app.state, "joined", None)
        return {"store": store_ok, "broker": bool(joined and joined.is_set())}

    add_common(app, "trainer", readiness)
    return app
