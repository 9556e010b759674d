"""Trainer: consumes training requests, trains a candidate, records it, announces `model.ready`.

The Kafka consumer pauses its partitions while a run trains and keeps polling, so the group
membership stays alive; the offset is committed only when the run is recorded. A request
delivered twice is recognised by its event id and not trained again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import threading
import time
from collections.abc import Awaitable
from concurrent.futures import Future
from pathlib import Path

from pydantic import ValidationError

from services.trainer.version_actions import VersionActions, announce
from shared import metrics
from shared.events import (
    EXPERIMENT_DECIDED_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    Event,
    ExperimentDecidedEvent,
    ModelReadyEvent,
    TrainingRequestedEvent,
    new_id,
    utcnow,
)
from shared.kafka import ConsumerLoop, DeadLetters, make_group_consumer
from shared.ml.dataset import not_enough_reason
from shared.ml.registry import Registry
from shared.ml.train import TrainConfig
from shared.ml.training_run import (
    CandidateResult,
    champion_and_index,
    read_training_data,
    summarise,
    train_candidate,
)
from shared.ml.vectors import StoredVectors
from shared.settings import Settings
from shared.store import ModelVersion, Store, TrainingRun

log = logging.getLogger(__name__)
GROUP_ID = "eduranker-trainer"
ROOT = Path(__file__).resolve().parent.parent.parent


def code_version() -> dict[str, str]:
    """The package version and, in a git checkout, the commit: which code trained a version."""
    version = {"eduranker": "unknown", "git_commit": "unknown"}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        version["eduranker"] = importlib.metadata.version("eduranker")
    git = ROOT / ".git"
    with contextlib.suppress(OSError):
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = git / ref
            if path.exists():
                head = path.read_text().strip()
            else:
                packed = (git / "packed-refs").read_text().splitlines()
                head = next((line.split()[0] for line in packed if line.endswith(" " + ref)), "unknown")
        version["git_commit"] = head
    return version


class Trainer:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.registry = Registry(settings.model_dir).ensure()
        self.version_actions = VersionActions(settings, store, self.registry)
        self.busy = threading.Event()

    async def recover(self) -> None:
        """After a crash: no half-written version, runs left 'running' failed, index and folders agree."""
        await self.version_actions.reconcile()
        await self.version_actions.prune()

    async def handle(self, request: TrainingRequestedEvent) -> ModelReadyEvent | None:
        runs = await self.store.list_training_runs(limit=500)
        done = next((r for r in runs if r.request_event_id == request.event_id and r.status != "running"),
                    None)
        if done is not None:
            return self._answer_again(request, done)
        run = TrainingRun(run_id=new_id(), request_event_id=request.event_id, reason=request.reason)
        await self.store.save_training_run(run)
        log.info("event=training_started run=%s request=%s reason=%s", run.run_id, request.event_id,
                 request.reason)
        started = time.perf_counter()
        self.busy.set()
        try:
            ready = await self._train(request, run)
        except Exception as exc:
            log.exception("event=training_failed run=%s", run.run_id)
            run.status, run.detail = "failed", f"{type(exc).__name__}: {exc}"[:500]
            run.version = None
            try:
                await self.version_actions.discard_run(run.run_id)
            except Exception:
                log.exception("event=discard_failed run=%s", run.run_id)
            ready = self._event(request, run, "failed")
        finally:
            self.busy.clear()
        run.finished_at = utcnow()
        await self.store.save_training_run(run)
        metrics.TRAINING_RUNS.labels(run.status).inc()
        metrics.TRAINING_DURATION.observe(time.perf_counter() - started)
        return ready

    def _answer_again(self, request: TrainingRequestedEvent, run: TrainingRun) -> ModelReadyEvent | None:
        """A request delivered again: its run already ended (a crash before the commit, or a kill
        mid-run that `recover` marked failed). Its outcome is announced again rather than trained
        twice, so whoever waits on the request (the aggregator's pending slot) is not left waiting;
        a promoted version that is no longer the champion is not announced again."""
        if run.status == "promoted" and self.registry.champion() != run.version:
            log.info("event=duplicate_request_ignored request=%s", request.event_id)
            return None
        log.info("event=duplicate_request_answered request=%s run=%s status=%s", request.event_id,
                 run.run_id, run.status)
        return self._event(request, run, run.status)

    def _event(self, request: TrainingRequestedEvent, run: TrainingRun, decision: str,
               experiment_id: str | None = None) -> ModelReadyEvent:
        return ModelReadyEvent(
            version=run.version or "", location=run.version or "", base_model=self.settings.base_model,
            metrics={k: v for k, v in run.metrics.items() if isinstance(v, int | float)},
            decision=decision, reason=run.detail, request_event_id=request.event_id,  # type: ignore[arg-type]
            experiment_id=experiment_id,
        )

    async def decided(self, event: ExperimentDecidedEvent) -> ModelReadyEvent | None:
        """Users decided an experiment: promote, retire or roll back (None: already done)."""
        ready = await self.version_actions.experiments.act(event)
        if ready is not None:
            await self.version_actions.prune()
        return ready

    async def _train(self, request: TrainingRequestedEvent, run: TrainingRun) -> ModelReadyEvent:
        """One run: its hyperparameters, the feedback it reads, the candidate (trained off the event
        loop by `shared.ml.training_run`), then what the decision changes."""
        try:
            config = TrainConfig.from_settings(self.settings).with_overrides(request.hyperparameters)
        except ValidationError as exc:
            run.status, run.detail = "failed", f"bad hyperparameters in the request: {exc.errors()[0]['msg']}"
            return self._event(request, run, "failed")
        include_test = (self.settings.train_include_test if request.include_test is None
                        else request.include_test)
        data = await read_training_data(self.store, include_test)
        run.pairs = len(data.pairs)
        reason = not_enough_reason(data.pairs, self.settings.train_min_feedback)
        if reason:
            run.status, run.detail = "skipped", reason
            log.info("event=training_skipped run=%s reason=%r", run.run_id, reason)
            return self._event(request, run, "skipped")
        metrics.TRAINING_PAIRS.set(len(data.pairs))
        extra = {
            "run_id": run.run_id, "request_event_id": request.event_id, "request_reason": request.reason,
            "requested_hyperparameters": {k: getattr(config, k) for k in sorted(config.pinned)},
            "feedback": {"used": len(data.feedback), "test_feedback": data.test_feedback,
                         "test_feedback_included": include_test},
            "code": code_version(),
        }
        stored = StoredVectors(self.store, asyncio.get_running_loop())

        def work() -> CandidateResult:  # on a worker thread: CPU-bound
            champion, index = champion_and_index(self.settings, self.registry, data, stored)
            return train_candidate(
                self.settings, data.pairs, index, champion, self.registry, config=config,
                progress=lambda line: log.info("event=training_progress run=%s %s", run.run_id, line),
                extra_metadata=extra, switch_champion=False,
            )

        result = await asyncio.to_thread(work)
        experiment_id = await self._record(run, result)
        return self._event(request, run, result.decision, experiment_id)

    async def _record(self, run: TrainingRun, result: CandidateResult) -> str | None:
        """The version in the store's index, then the champion pointer or the experiment users decide
        in (returns its id); the run's outcome and metrics; old rejected versions pruned."""
        decision = result.decision
        summary = summarise(result.metadata["metrics"])
        # Index first, champion pointer (or experiment) second: a crash in between leaves an indexed,
        # unserved version that `VersionActions.reconcile` removes with its unfinished run.
        await self.store.save_model_version(ModelVersion(
            version=result.version, location=result.version, status=decision,
            base_model=self.settings.base_model, metrics=summary,
        ))
        experiment_id = None
        if decision == "promoted":
            self.registry.set_champion(result.version)
        elif decision == "challenger":
            experiment = await self.version_actions.experiments.challenge(
                result.version, f"training run {run.run_id}", run_id=run.run_id)
            experiment_id = experiment.experiment_id
        run.status, run.detail, run.version, run.metrics = decision, result.reason, result.version, summary
        for model, values in result.metadata["metrics"].items():
            for name in ("ndcg@10", "mrr@10", "f1", "auc"):
                if name in values:
                    metrics.TRAINING_METRIC.labels(model, name).set(values[name])
        await self.version_actions.prune()
        return experiment_id


def request_consumer(trainer: Trainer, settings: Settings, loop: asyncio.AbstractEventLoop) -> ConsumerLoop:
    """One training request or users' decision at a time, worked on `loop`; its `model.ready` is
    sent before the request is committed."""

    async def answer(work: Awaitable[ModelReadyEvent | None]) -> None:
        ready = await work
        if ready is not None:
            await announce(settings, ready)

    def handle(event: Event) -> Future[None] | None:
        if isinstance(event, TrainingRequestedEvent):
            return asyncio.run_coroutine_threadsafe(answer(trainer.handle(event)), loop)
        if isinstance(event, ExperimentDecidedEvent):
            return asyncio.run_coroutine_threadsafe(answer(trainer.decided(event)), loop)
        return None

    return ConsumerLoop(
        lambda: make_group_consumer(settings, (TRAINING_REQUESTED_TOPIC, EXPERIMENT_DECIDED_TOPIC), GROUP_ID),
        TRAINING_REQUESTED_TOPIC, handle, settings, name="trainer-consumer",
        dead_letters=DeadLetters(settings), max_records=1, retry_s=5.0,
    )
