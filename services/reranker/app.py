"""Reranker service: search over the catalogue, the served model hot-swapped on `model.ready`.

What it follows, in one screen: the `model.ready` topic (every replica reads every event) and, as
a safety net beside Kafka, a watcher on the store's catalogue, the registry's champion and the
store's running experiment. Both hand a new version to `ModelHolder.follow`, the one hot-swap path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from services.reranker.catalogue_follower import CatalogueFollower
from services.reranker.deps import loaded_holder
from services.reranker.holder import ModelHolder
from services.reranker.inference_log import InferenceLog
from services.reranker.routes.catalogue import router as catalogue_router
from services.reranker.routes.page import add_page
from services.reranker.routes.search import router as search_router
from shared.events import MODEL_READY_TOPIC, Event, ModelReadyEvent
from shared.messaging.consumer import ConsumerLoop, Handler
from shared.messaging.producer import Producer
from shared.ml.ranking.pipeline import VERSION_ZERO
from shared.ml.runtime.device import configure_torch_threads
from shared.ml.runtime.vectors import StoredVectors
from shared.settings import Settings, get_settings
from shared.store import StoreUnavailableError, store_from
from shared.web.http import add_common, store_answers

log = logging.getLogger(__name__)


def on_model_ready(holder: ModelHolder) -> Handler:
    """`model.ready`'s handler, on the service's event loop: a promoted version is served (tried
    again even where it failed before), and beside it the store's running experiment, which a
    promotion, a challenger or a retirement may have changed."""

    async def handle(event: Event) -> None:
        assert isinstance(event, ModelReadyEvent)
        log.info("event=model_ready_received version=%s decision=%s experiment=%s", event.version,
                 event.decision, event.experiment_id)
        if event.decision not in ("promoted", "challenger", "retired"):
            return
        champion = None
        if event.decision == "promoted":
            champion = VERSION_ZERO if event.version == VERSION_ZERO else event.location
        await holder.follow(champion, announced=True)

    return handle


async def watch(settings: Settings, holder: ModelHolder, catalogue: CatalogueFollower) -> None:
    """Safety net beside Kafka: follow catalogue changes, the registry's champion and the store's
    running experiment."""
    while True:
        await asyncio.sleep(settings.watch_interval_s)
        try:
            await catalogue.refresh_if_changed()
            await holder.follow(holder.registry.champion())
        except StoreUnavailableError as exc:
            log.warning("event=watch_failed error=%s", exc)
        except Exception:  # the watcher must outlive any one bad round
            log.exception("event=watch_failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_torch_threads(settings.torch_threads)
        store = await store_from(settings)
        loop = asyncio.get_running_loop()
        holder = ModelHolder(settings, store, StoredVectors(store, loop))
        inference_log = InferenceLog(store, max_backlog=settings.inference_log_max_backlog)
        catalogue = CatalogueFollower(store, holder.indexes)
        app.state.store, app.state.holder, app.state.inference_log = store, holder, inference_log
        app.state.catalogue = catalogue
        await holder.load_initial(await catalogue.read_all())
        await holder.follow()  # a restart joins the running experiment at once
        inference_log.start()
        producer = Producer(settings)  # dead letters only: connects at the first one
        # No consumer group: every replica reads every model.ready (a broadcast).
        consumer = ConsumerLoop(settings, MODEL_READY_TOPIC, on_model_ready(holder), producer,
                                name="model-ready").start()
        app.state.consumer = consumer
        watcher = asyncio.create_task(watch(settings, holder, catalogue))
        try:
            yield
        finally:
            watcher.cancel()
            await consumer.stop()
            await producer.close()
            await inference_log.close()
            # Off the loop and before the store closes: an index build under way writes its vectors
            # to the store through this loop.
            await asyncio.to_thread(holder.close)
            await store.close()

    app = FastAPI(title="EduRanker reranker", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.include_router(search_router)
    app.include_router(catalogue_router)
    add_page(app)

    def details() -> dict[str, Any]:
        """How far the served model's vectors got: ready does not wait for them."""
        holder = loaded_holder(app)
        if holder is None:
            return {}
        state = holder.state
        return {"embedding": holder.indexes.embedding_info(state.model),
                "catalogue_size": state.index.live_count}

    async def readiness() -> dict[str, bool]:
        consumer = getattr(app.state, "consumer", None)
        return {"store": await store_answers(app), "model": loaded_holder(app) is not None,
                "broker": bool(consumer and consumer.ready.is_set())}

    add_common(app, "reranker", readiness, details)
    return app
