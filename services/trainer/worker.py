"""Trainer: consumes training requests, trains a candidate, records it, announces `model.ready`.

The Kafka consumer pauses its partitions while a run trains and keeps polling, so the group
membership stays alive; the offset is committed only when the run is recorded. A request
delivered twice is recognised by its event id and not trained again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from kafka.errors import KafkaError

from shared import metrics
from shared.events import (
    MODEL_READY_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    ModelReadyEvent,
    TrainingRequestedEvent,
    new_id,
    utcnow,
)
from shared.kafka import make_group_consumer, make_producer, parse, publish
from shared.ml.candidate import index_for_pairs, summarise, train_candidate
from shared.ml.dataset import build_pairs, not_enough_reason
from shared.ml.pipeline import load_champion
from shared.ml.registry import Registry
from shared.settings import Settings
from shared.store import ModelVersion, Store, TrainingRun

log = logging.getLogger(__name__)
GROUP_ID = "eduranker-trainer"


class Trainer:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.registry = Registry(settings.model_dir).ensure()
        self.busy = threading.Event()

    async def recover(self) -> None:
        """After a crash: drop half-written version folders and close runs left 'running'."""
        removed = self.registry.clean_partial()
        if removed:
            log.warning("event=partial_versions_removed names=%s", ",".join(removed))
        for run in await self.store.list_training_runs(limit=200):
            if run.status == "running":
                run.status, run.detail, run.finished_at = "failed", "trainer stopped during the run", utcnow()
                await self.store.save_training_run(run)

    async def handle(self, request: TrainingRequestedEvent) -> ModelReadyEvent | None:
        runs = await self.store.list_training_runs(limit=500)
        if any(r.request_event_id == request.event_id and r.status != "running" for r in runs):
            log.info("event=duplicate_request_ignored request=%s", request.event_id)
            return None
        run = TrainingRun(run_id=new_id(), request_event_id=request.event_id, reason=request.reason)
        await self.store.save_training_run(run)
        started = time.perf_counter()
        self.busy.set()
        try:
            ready = await self._train(request, run)
        except Exception as exc:
            log.exception("event=training_failed run=%s", run.run_id)
            run.status, run.detail = "failed", f"{type(exc).__name__}: {exc}"[:500]
            ready = self._event(request, run, "failed")
        finally:
            self.busy.clear()
        run.finished_at = utcnow()
        await self.store.save_training_run(run)
        metrics.TRAINING_RUNS.labels(run.status).inc()
        metrics.TRAINING_DURATION.observe(time.perf_counter() - started)
        return ready

    def _event(self, request: TrainingRequestedEvent, run: TrainingRun, decision: str) -> ModelReadyEvent:
        return ModelReadyEvent(
            version=run.version or "", location=run.version or "", base_model=self.settings.base_model,
            metrics={k: v for k, v in run.metrics.items() if isinstance(v, int | float)},
            decision=decision, reason=run.detail, request_event_id=request.event_id,  # type: ignore[arg-type]
        )

    async def _train(self, request: TrainingRequestedEvent, run: TrainingRun) -> ModelReadyEvent:
        feedback = await self.store.list_feedback(include_test=self.settings.train_include_test)
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

        def work():  # noqa: ANN202 - runs on a worker thread: CPU-bound
            champion_name = self.registry.champion()
            folder = self.registry.resolve(champion_name) if champion_name else None
            champion = load_champion(self.settings, champion_name, folder)
            index = index_for_pairs(resources, pairs, champion)
            return train_candidate(
                self.settings, pairs, index, champion, self.registry,
                progress=lambda line: log.info("event=training_progress run=%s %s", run.run_id, line),
                extra_metadata={"run_id": run.run_id, "request_event_id": request.event_id,
                                "request_reason": request.reason},
            )

        result = await asyncio.to_thread(work)
        decision = "promoted" if result.promoted else "rejected"
        run.status, run.detail, run.version = decision, result.reason, result.version
        run.metrics = summarise(result.metadata["metrics"])
        for model, values in result.metadata["metrics"].items():
            for name in ("ndcg@10", "mrr@10", "f1", "auc"):
                if name in values:
                    metrics.TRAINING_METRIC.labels(model, name).set(values[name])
        await self.store.save_model_version(ModelVersion(
            version=result.version, location=result.version, status=decision,
            base_model=self.settings.base_model, metrics=run.metrics,
        ))
        return self._event(request, run, decision)


def consume(trainer: Trainer, settings: Settings, loop: asyncio.AbstractEventLoop,
            stop: threading.Event, joined: threading.Event) -> None:
    """The consumer thread: one request at a time, partitions paused while it trains."""
    producer = None
    consumer = None
    while not stop.is_set():
        try:
            if consumer is None:
                consumer = make_group_consumer(settings, TRAINING_REQUESTED_TOPIC, GROUP_ID)
                producer = make_producer(settings)
            batches = consumer.poll(timeout_ms=500, max_records=1)
            if consumer.assignment():
                joined.set()
            for records in batches.values():
                for record in records:
                    request = parse(TRAINING_REQUESTED_TOPIC, record.value)
                    if not isinstance(request, TrainingRequestedEvent):
                        continue
                    assigned = list(consumer.assignment())
                    consumer.pause(*assigned)
                    future = asyncio.run_coroutine_threadsafe(trainer.handle(request), loop)
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
            log.warning("event=trainer_consumer_error error=%s", exc)
            stop.wait(1.0)
    if consumer is not None:
        consumer.close()
    if producer is not None:
        producer.close(5)
