"""Reranker service: search over the catalogue, served model hot-reloaded on `model.ready`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from services.reranker.catalogue import CatalogueFollower
from services.reranker.inference_log import InferenceLog
from services.reranker.page import add_page
from services.reranker.routes import router
from services.reranker.serving import ModelHolder
from shared.events import MODEL_READY_TOPIC, Event, ModelReadyEvent
from shared.http import add_common, store_answers
from shared.kafka import ConsumerLoop, DeadLetters, make_broadcast_consumer
from shared.ml.model import configure_torch_threads
from shared.ml.pipeline import VERSION_ZERO
from shared.ml.vectors import StoredVectors
from shared.settings import Settings, get_settings
from shared.store import StoreUnavailableError, store_from

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_torch_threads(settings.torch_threads)
        store = await store_from(settings)
        loop = asyncio.get_running_loop()
        holder = ModelHolder(settings, StoredVectors(store, loop))
        inference_log = InferenceLog(store, max_backlog=settings.inference_log_max_backlog)
        app.state.store, app.state.holder, app.state.inference_log = store, holder, inference_log
        catalogue = CatalogueFollower(store, holder)
        app.state.refresh_catalogue = catalogue.refresh
        await holder.load_initial(await catalogue.read_all())
        await holder.set_experiment(await store.running_experiment())  # a restart joins it at once
        inference_log.start()

        async def follow(event: ModelReadyEvent) -> None:
            if event.decision == "promoted":
                await holder.reload(VERSION_ZERO if event.version == VERSION_ZERO else event.location)
            await holder.set_experiment(await store.running_experiment())

        def on_model_ready(event: Event) -> None:
            assert isinstance(event, ModelReadyEvent)
            log.info("event=model_ready_received version=%s decision=%s experiment=%s", event.version,
                     event.decision, event.experiment_id)
            if event.decision in ("promoted", "challenger", "retired"):
                asyncio.run_coroutine_threadsafe(follow(event), loop).result()

        consumer = ConsumerLoop(lambda: make_broadcast_consumer(settings, MODEL_READY_TOPIC),
                                MODEL_READY_TOPIC, on_model_ready, settings, name="model-ready",
                                dead_letters=DeadLetters(settings)).start()
        app.state.consumer = consumer

        async def watch() -> None:
            """Safety net beside Kafka: follow catalogue changes, the registry's champion and the
            store's running experiment."""
            while True:
                await asyncio.sleep(settings.watch_interval_s)
                try:
                    await catalogue.refresh_if_changed()
                    champion = holder.registry.champion()
                    if (champion and not holder.pinned and champion != holder.state.model.version
                            and champion not in holder.failed):
                        await holder.reload(champion)
                    await holder.set_experiment(await store.running_experiment())
                except StoreUnavailableError as exc:
                    log.warning("event=watch_failed error=%s", exc)
                except Exception:  # the watcher must outlive any one bad round
                    log.exception("event=watch_failed")

        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
            consumer.stop()
            await inference_log.close()
            # Off the loop and before the store closes: an index build under way writes its vectors
            # to the store through this loop.
            await asyncio.to_thread(holder.close)
            await store.close()

    app = FastAPI(title="EduRanker reranker", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.include_router(router)
    add_page(app)

    def details() -> dict[str, Any]:
        """How far the served model's vectors got: ready does not wait for them."""
        holder = getattr(app.state, "holder", None)
        if holder is None or not holder.ready:
            return {}
        state = holder.state
        return {"embedding": holder.embedding_info(state.model), "catalogue_size": state.index.live_count}

    async def readiness() -> dict[str, bool]:
        consumer = getattr(app.state, "consumer", None)
        return {"store": await store_answers(app),
                "model": app.state.holder.ready if hasattr(app.state, "holder") else False,
                "broker": bool(consumer and consumer.ready.is_set())}

    add_common(app, "reranker", readiness, details)
    return app
