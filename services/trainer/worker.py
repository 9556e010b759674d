"""Trainer: consumes training requests and users' decisions; a run trains a candidate, the
lifecycle (`lifecycle.py`) records what its gate decided, and its `model.ready` is announced.

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
from pathlib import Path

from pydantic import ValidationError

from services.trainer.lifecycle import Lifecycle, announce
from shared import metrics
from shared.events import (
    EXPERIMENT_DECIDED_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    Event,
    ExperimentDecidedEvent,
    ModelReadyEvent,
    TrainingRequestedEvent,
)
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.producer import Producer
from shared.ml.registry import Registry
from shared.ml.runtime.vectors import StoredVectors
from shared.ml.training.dataset import not_enough_reason
from shared.ml.training.hyperparameters import TrainConfig
from shared.ml.training.run import (
    CandidateResult,
    champion_and_index,
    read_training_data,
    summarise,
    train_candidate,
)
from shared.records import TrainingRun, new_id, utcnow
from shared.settings import Settings
from shared.store import Store

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
    def __init__(self, settings: Settings, store: Store, producer: Producer) -> None:
        self.settings = settings
        self.store = store
        self.registry = Registry(settings.model_dir).ensure()
        self.lifecycle = Lifecycle(settings, store, self.registry, producer)
        self.busy = threading.Event()

    async def recover(self) -> None:
        """After a crash: no half-written version, runs left 'running' failed, index and folders agree."""
        await self.lifecycle.versions.reconcile()
        await self.lifecycle.versions.prune()

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
                await self.lifecycle.versions.discard_run(run.run_id)
            except Exception:
                log.exception("event=discard_failed run=%s", run.run_id)
            ready = self.lifecycle.run_ended(run, "failed", request.event_id)
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
        return self.lifecycle.run_ended(run, run.status, request.event_id)  # type: ignore[arg-type]

    async def decided(self, event: ExperimentDecidedEvent) -> ModelReadyEvent | None:
        """Users decided an experiment: promote, retire or roll back (None: already done)."""
        ready = await self.lifecycle.decide(event)
        if ready is not None:
            await self.lifecycle.versions.prune()
        return ready

    async def _train(self, request: TrainingRequestedEvent, run: TrainingRun) -> ModelReadyEvent:
        """One run: its hyperparameters, the feedback it reads, the candidate (trained off the event
        loop by `shared.ml.training.run`), then what the decision changes."""
        try:
            config = TrainConfig.from_settings(self.settings).with_overrides(request.hyperparameters)
        except ValidationError as exc:
            run.status, run.detail = "failed", f"bad hyperparameters in the request: {exc.errors()[0]['msg']}"
            return self.lifecycle.run_ended(run, "failed", request.event_id)
        include_test = (self.settings.train_include_test if request.include_test is None
                        else request.include_test)
        data = await read_training_data(self.store, include_test, self.settings.evidence_searches)
        pairs = await asyncio.to_thread(lambda: data.pairs)  # the click model and the judgments: CPU
        run.pairs = len(pairs)
        reason = not_enough_reason(pairs, self.settings.train_min_feedback)
        if reason:
            run.status, run.detail = "skipped", reason
            log.info("event=training_skipped run=%s reason=%r", run.run_id, reason)
            return self.lifecycle.run_ended(run, "skipped", request.event_id)
        metrics.TRAINING_PAIRS.set(len(pairs))
        evidence = data.evidence
        extra = {
            "run_id": run.run_id, "request_event_id": request.event_id, "request_reason": request.reason,
            "requested_hyperparameters": {k: getattr(config, k) for k in sorted(config.pinned)},
            "feedback": {"used": len(data.feedback), "test_feedback": data.test_feedback,
                         "test_feedback_included": include_test},
            "evidence": {"searches": len(data.inferences), "interactions": len(data.interactions),
                         "judged": len(evidence.judgments),
                         "remembered": len(data.memory)},
            "click_model": evidence.examination.as_dict(),
            "code": code_version(),
        }
        stored = StoredVectors(self.store, asyncio.get_running_loop())

        def work() -> CandidateResult:  # on a worker thread: CPU-bound
            champion, index = champion_and_index(self.settings, self.registry, data, stored)
            return train_candidate(
                self.settings, pairs, index, champion, self.registry, config=config,
                progress=lambda line: log.info("event=training_progress run=%s %s", run.run_id, line),
                extra_metadata=extra, remembered=data.memory,
            )

        result = await asyncio.to_thread(work)
        experiment_id = await self._record(run, result)
        return self.lifecycle.run_ended(run, result.decision, request.event_id, experiment_id)

    async def _record(self, run: TrainingRun, result: CandidateResult) -> str | None:
        """What the gate decided, through the lifecycle (returns the id of the experiment users decide
        in, if any); the run's outcome and metrics; old rejected versions pruned."""
        summary = summarise(result.metadata["metrics"])
        experiment_id = await self.lifecycle.enter(result.version, result.decision, summary, run.run_id)
        run.status, run.detail, run.version, run.metrics = (result.decision, result.reason, result.version,
                                                            summary)
        for model, values in result.metadata["metrics"].items():
            for name in ("ndcg@10", "mrr@10", "f1", "auc"):
                if name in values:
                    metrics.TRAINING_METRIC.labels(model, name).set(values[name])
        await self.lifecycle.versions.prune()
        return experiment_id


def request_consumer(trainer: Trainer, settings: Settings) -> ConsumerLoop:
    """One training request or users' decision at a time, in the trainer's consumer group; its
    `model.ready` is sent (with the lifecycle's producer) before the request is committed."""
    producer = trainer.lifecycle.producer

    async def handle(event: Event) -> None:
        if isinstance(event, TrainingRequestedEvent):
            ready = await trainer.handle(event)
        elif isinstance(event, ExperimentDecidedEvent):
            ready = await trainer.decided(event)
        else:
            return
        if ready is not None:
            await announce(producer, ready)

    return ConsumerLoop(settings, (TRAINING_REQUESTED_TOPIC, EXPERIMENT_DECIDED_TOPIC), handle, producer,
                        group_id=GROUP_ID, name="trainer-consumer", max_records=1, retry_s=5.0)
