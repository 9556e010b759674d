"""Trainer service: the Kafka worker plus its admin API (manual run, versions, promote, rollback, runs)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse

from services.trainer.experiments import ExperimentError
from services.trainer.version_actions import VersionActionError, VersionActions, request_training
from services.trainer.worker import Trainer, request_consumer
from shared.auth import require_admin
from shared.deps import SettingsDep, StoreDep
from shared.http import add_common, store_answers
from shared.kafka import ensure_topics
from shared.ml.hyperparameters import Hyperparameters
from shared.ml.model import configure_torch_threads
from shared.ml.registry import VERSION_RE
from shared.settings import Settings, get_settings
from shared.store import store_from

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
async def app_version_actions(request: Request) -> VersionActions:
    return request.app.state.version_actions


ActionsDep = Annotated[VersionActions, Depends(app_version_actions)]
VersionName = Path(pattern=VERSION_RE.pattern, description="A registry version, like v0003.")


class TrainBody(Hyperparameters):
    """This run's own values; each one left out comes from the trainer's settings."""

    include_test: bool | None = None


@router.post("/train", status_code=202)
async def train(settings: SettingsDep, body: TrainBody | None = None) -> dict:
    """Ask for a training run now (reason `manual`), without waiting for the threshold."""
    body = body or TrainBody()
    event = await request_training(settings,
                                   Hyperparameters(**body.model_dump(exclude={"include_test"})),
                                   body.include_test)
    return {"requested": True, "event_id": event.event_id, "hyperparameters": event.hyperparameters,
            "include_test": event.include_test}


@router.get("/versions")
async def versions(actions: ActionsDep) -> dict:
    """Every indexed version: status, metrics, the run's reason, champion and previous champion."""
    return await actions.listing()


@router.post("/versions/{version}/promote")
async def promote(actions: ActionsDep, version: str = VersionName) -> dict:
    """Make this version the champion, whatever its gate said; `model.ready` tells the rerankers."""
    event = await actions.promote(version)
    return {"champion": event.version, "model_ready": event.model_dump(mode="json")}


@router.post("/rollback")
async def rollback(actions: ActionsDep) -> dict:
    """Back to the previous champion (or version 0); the current one becomes `retired`."""
    event = await actions.rollback()
    return {"champion": event.version, "model_ready": event.model_dump(mode="json")}


ChallengerName = Path(pattern=f"{VERSION_RE.pattern}|^v0$",
                      description="A registry version, like v0003, or v0 for version 0.")


@router.post("/versions/{version}/challenge")
async def challenge(actions: ActionsDep, version: str = ChallengerName) -> dict:
    """Let users compare this version with the champion by interleaving; a running experiment ends."""
    event = await actions.challenge(version)
    return {"experiment_id": event.experiment_id, "model_ready": event.model_dump(mode="json")}


@router.get("/experiments")
async def experiments(store: StoreDep, limit: int = 20) -> dict:
    """Online experiments, newest first: versions, status, decision, reason and evidence."""
    items = await store.list_experiments(limit=max(1, min(limit, 200)))
    return {"experiments": [e.model_dump(mode="json") for e in items]}


@router.post("/experiments/stop")
async def stop_experiment(actions: ActionsDep) -> dict:
    """End the running experiment; the champion serves alone."""
    event = await actions.stop_experiment()
    return {"stopped": event.experiment_id, "model_ready": event.model_dump(mode="json")}


@router.get("/runs")
async def runs(store: StoreDep, limit: int = 20) -> dict:
    items = await store.list_training_runs(limit=max(1, min(limit, 200)))
    return {"runs": [r.model_dump(mode="json") for r in items]}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_torch_threads(settings.torch_threads)
        await asyncio.to_thread(ensure_topics, settings)
        store = await store_from(settings)
        trainer = Trainer(settings, store)
        await trainer.recover()
        app.state.store, app.state.trainer = store, trainer
        app.state.version_actions = VersionActions(settings, store, trainer.registry)
        app.state.consumer = request_consumer(trainer, settings, asyncio.get_running_loop()).start()
        try:
            yield
        finally:
            await asyncio.to_thread(app.state.consumer.stop, 30)
            await store.close()

    app = FastAPI(title="EduRanker trainer", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.include_router(router)

    @app.exception_handler(VersionActionError)
    @app.exception_handler(ExperimentError)
    async def refused(request: Request, exc: VersionActionError | ExperimentError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    async def readiness() -> dict[str, bool]:
        consumer = getattr(app.state, "consumer", None)
        return {"store": await store_answers(app), "broker": bool(consumer and consumer.joined.is_set())}

    add_common(app, "trainer", readiness)
    return app
