"""Trainer service: the Kafka worker plus its admin API (manual run, versions, promote, rollback, runs,
the click model)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse

from services.trainer.lifecycle import Lifecycle, LifecycleError, request_training
from services.trainer.worker import Trainer, request_consumer
from shared.messaging.admin import ensure_topics
from shared.messaging.producer import Producer
from shared.ml.registry import VERSION_RE
from shared.ml.runtime.device import configure_torch_threads
from shared.ml.training.dataset import estimate_examination, impressions_and_actions
from shared.ml.training.hyperparameters import Hyperparameters
from shared.settings import Settings, get_settings
from shared.store import store_from
from shared.web.auth import require_admin
from shared.web.deps import SettingsDep, StoreDep
from shared.web.http import add_common, store_answers

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
async def app_lifecycle(request: Request) -> Lifecycle:
    return request.app.state.trainer.lifecycle


LifecycleDep = Annotated[Lifecycle, Depends(app_lifecycle)]
VersionName = Path(pattern=VERSION_RE.pattern, description="A registry version, like v0003.")


class TrainBody(Hyperparameters):
    """This run's own values; each one left out comes from the trainer's settings."""

    include_test: bool | None = None


@router.post("/train", status_code=202)
async def train(lifecycle: LifecycleDep, body: TrainBody | None = None) -> dict:
    """Ask for a training run now (reason `manual`), without waiting for the threshold."""
    body = body or TrainBody()
    event = await request_training(lifecycle.producer,
                                   Hyperparameters(**body.model_dump(exclude={"include_test"})),
                                   body.include_test)
    return {"requested": True, "event_id": event.event_id, "hyperparameters": event.hyperparameters,
            "include_test": event.include_test}


@router.get("/versions")
async def versions(lifecycle: LifecycleDep) -> dict:
    """Every indexed version: status, metrics, the run's reason, champion and previous champion."""
    return await lifecycle.versions.listing()


@router.post("/versions/{version}/promote")
async def promote(lifecycle: LifecycleDep, version: str = VersionName) -> dict:
    """Make this version the champion, whatever its gate said; `model.ready` tells the rerankers."""
    event = await lifecycle.promote(version)
    return {"champion": event.version, "model_ready": event.model_dump(mode="json")}


@router.post("/rollback")
async def rollback(lifecycle: LifecycleDep) -> dict:
    """Back to the previous champion (or version 0); the current one becomes `retired`."""
    event = await lifecycle.rollback()
    return {"champion": event.version, "model_ready": event.model_dump(mode="json")}


ChallengerName = Path(pattern=f"{VERSION_RE.pattern}|^v0$",
                      description="A registry version, like v0003, or v0 for version 0.")


@router.post("/versions/{version}/challenge")
async def challenge(lifecycle: LifecycleDep, version: str = ChallengerName) -> dict:
    """Let users compare this version with the champion by interleaving; a running experiment ends."""
    event = await lifecycle.challenge(version)
    return {"experiment_id": event.experiment_id, "model_ready": event.model_dump(mode="json")}


@router.get("/experiments")
async def experiments(store: StoreDep, limit: int = 20) -> dict:
    """Online experiments, newest first: versions, status, decision, reason and evidence."""
    items = await store.list_experiments(limit=max(1, min(limit, 200)))
    return {"experiments": [e.model_dump(mode="json") for e in items]}


@router.post("/experiments/stop")
async def stop_experiment(lifecycle: LifecycleDep) -> dict:
    """End the running experiment; the champion serves alone."""
    event = await lifecycle.stop_experiment()
    return {"stopped": event.experiment_id, "model_ready": event.model_dump(mode="json")}


@router.get("/runs")
async def runs(store: StoreDep, limit: int = 20) -> dict:
    items = await store.list_training_runs(limit=max(1, min(limit, 200)))
    return {"runs": [r.model_dump(mode="json") for r in items]}


@router.get("/click-model")
async def click_model(store: StoreDep, settings: SettingsDep) -> dict:
    """Where people look, estimated now from the newest searches and their opens (what the next
    run would estimate; the served version's own is in the reranker's info-modele)."""
    inferences = [i for i in await store.recent_inferences(settings.evidence_searches) if not i.is_test]
    interactions = await store.list_interactions(include_test=settings.train_include_test)
    impressions, _ = impressions_and_actions(inferences, [], interactions)
    return (await asyncio.to_thread(estimate_examination, impressions, interactions)).as_dict()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_torch_threads(settings.torch_threads)
        await asyncio.to_thread(ensure_topics, settings)
        store = await store_from(settings)
        producer = Producer(settings)
        trainer = Trainer(settings, store, producer)
        await trainer.recover()
        app.state.store, app.state.trainer = store, trainer
        app.state.consumer = request_consumer(trainer, settings).start()
        try:
            yield
        finally:
            await app.state.consumer.stop(30)
            await producer.close()
            await store.close()

    app = FastAPI(title="EduRanker trainer", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.include_router(router)

    @app.exception_handler(LifecycleError)
    async def refused(request: Request, exc: LifecycleError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    async def readiness() -> dict[str, bool]:
        consumer = getattr(app.state, "consumer", None)
        return {"store": await store_answers(app), "broker": bool(consumer and consumer.joined.is_set())}

    add_common(app, "trainer", readiness)
    return app
