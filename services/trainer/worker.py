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
from pathlib import Path

from kafka.errors import KafkaError
from pydantic import ValidationError

from services.trainer.operations import Versions
from shared import metrics
from shared.broker import BrokerOutage
from shared.events import (
    EXPERIMENT_DECIDED_TOPIC,
    MODEL_READY_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    ExperimentDecidedEvent,
    ModelReadyEvent,
    TrainingRequestedEvent,
    new_id,
    utcnow,
)
from shared.kafka import DeadLetters, make_group_consumer, make_producer, publish
from shared.ml.backends import onnx_cache
from shared.ml.candidate import index_for_pairs, summarise, train_candidate
from shared.ml.dataset import build_pairs, not_enough_reason
from shared.ml.embedder import load_encoder
from shared.ml.pipeline import load_champion
from shared.ml.registry import Registry
from shared.ml.train import TrainConfig
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
        self.versions = Versions(settings, store, self.registry)
        self.busy = threading.Event()

    async def recover(self) -> None:
        """After a crash: no half-written version, runs left 'running' failed, index and folders agree."""
        await self.versions.reconcile()
        await self.versions.prune()

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
                await self.versions.discard_run(run.run_id)
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
        ready = await self.versions.experiments.act(event)
        if ready is not None:
            await self.versions.prune()
        return ready

    async def _train(self, request: TrainingRequestedEvent, run: TrainingRun) -> ModelReadyEvent:
        try:
            config = TrainConfig.from_settings(self.settings).with_overrides(request.hyperparameters)
        except ValidationError as exc:
            run.status, run.detail = "failed", f"bad hyperparameters in the request: {exc.errors()[0]['msg']}"
            return self._event(request, run, "failed")
        include_test = (self.settings.train_include_test if request.include_test is None
                        else request.include_test)
        everything = await self.store.list_feedback(include_test=True)
        feedback = [f for f in everything if include_test or not f.is_test]
        inferences = await self.store.get_inferences(sorted({f.inference_id for f in feedback}))
        resources = await self.store.list_resources()
        pairs = build_pairs(feedback, inferences, {r.id: r for r in resources})
        run.pairs = len(pairs)
        reason = not_enough_reason(pairs, self.settings.train_min_feedback)
        if reason:
            run.status, run.detail = "skipped", reason
            log.info("event=training_skipped run=%s reason=%r", run.run_id, reason)
            return self._event(request, run, "skipped")
        metrics.TRAINING_PAIRS.set(len(pairs))
        extra = {
            "run_id": run.run_id, "request_event_id": request.event_id, "request_reason": request.reason,
            "requested_hyperparameters": {k: getattr(config, k) for k in sorted(config.pinned)},
            "feedback": {"used": len(feedback), "test_feedback": sum(f.is_test for f in everything),
                         "test_feedback_included": include_test},
            "code": code_version(),
        }

        stored = StoredVectors(self.store, asyncio.get_running_loop())

        def work():  # noqa: ANN202 - runs on a worker thread: CPU-bound
            champion = load_champion(self.settings, self.registry)
            if champion.embedder is not None:  # the reranker's vectors: same runtime, same identity
                champion.encoder = load_encoder(champion.embedder, self.settings.embedding_backend,
                                                onnx_cache(self.settings), self.settings.torch_threads)
            index = index_for_pairs(resources, pairs, champion, stored)
            return train_candidate(
                self.settings, pairs, index, champion, self.registry, config=config,
                progress=lambda line: log.info("event=training_progress run=%s %s", run.run_id, line),
                extra_metadata=extra, switch_champion=False,
            )

        result = await asyncio.to_thread(work)
        decision = result.decision
        summary = summarise(result.metadata["metrics"])
        # Index first, champion pointer (or experiment) second: a crash in between leaves an indexed,
        # unserved version that `Versions.reconcile` removes with its unfinished run.
        await self.store.save_model_version(ModelVersion(
            version=result.version, location=result.version, status=decision,
            base_model=self.settings.base_model, metrics=summary,
        ))
        experiment_id = None
        if decision == "promoted":
            self.registry.set_champion(result.version)
        elif decision == "challenger":
            experiment = await self.versions.experiments.challenge(
                result.version, f"training run {run.run_id}", run_id=run.run_id)
            experiment_id = experiment.experiment_id
        run.status, run.detail, run.version, run.metrics = decision, result.reason, result.version, summary
        for model, values in result.metadata["metrics"].items():
            for name in ("ndcg@10", "mrr@10", "f1", "auc"):
                if name in values:
                    metrics.TRAINING_METRIC.labels(model, name).set(values[name])
        await self.versions.prune()
        return self._event(request, run, decision, experiment_id)


def consume(trainer: Trainer, settings: Settings, loop: asyncio.AbstractEventLoop,
            stop: threading.Event, joined: threading.Event) -> None:
    """The consumer thread: one request or decision at a time, partitions paused while it works."""
    producer = None
    consumer = None
    dead_letters = DeadLetters(settings)
    outage = BrokerOutage(settings, "trainer-consumer")
    while not stop.is_set():
        try:
            if consumer is None:
                if not outage.reachable():
                    stop.wait(1.0)
                    continue
                consumer = make_group_consumer(settings, (TRAINING_REQUESTED_TOPIC, EXPERIMENT_DECIDED_TOPIC),
                                               GROUP_ID)
            if producer is None:
                producer = make_producer(settings)
            batches = consumer.poll(timeout_ms=500, max_records=1)
            outage.check()
            if consumer.assignment():
                joined.set()
            for records in batches.values():
                for record in records:
                    request = dead_letters.decode(record)
                    if isinstance(request, TrainingRequestedEvent):
                        work = trainer.handle(request)
                    elif isinstance(request, ExperimentDecidedEvent):
                        work = trainer.decided(request)
                    else:
                        continue
                    assigned = list(consumer.assignment())
                    consumer.pause(*assigned)
                    future = asyncio.run_coroutine_threadsafe(work, loop)
                    while not future.done():
                        consumer.poll(timeout_ms=200)  # keeps the group membership alive
                    consumer.resume(*assigned)
                    ready = future.result()
                    if ready is not None:
                        publish(producer, MODEL_READY_TOPIC, ready, key="model")
                        log.info("event=model_ready_sent version=%s decision=%s", ready.version,
                                 ready.decision)
            if batches:
                consumer.commit()
        except KafkaError as exc:
            outage.failed(exc)
            stop.wait(1.0)
        except Exception:
            # The request stays uncommitted: a new group member is handed it again after the pause.
            log.exception("event=trainer_request_failed action=retry_in_5s")
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close(autocommit=False)
            consumer = None
            stop.wait(5.0)
    if consumer is not None:
        consumer.close()
    if producer is not None:
        producer.close(5)
    dead_letters.close()
