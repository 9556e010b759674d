"""Aggregator: a faust-streaming app that counts feedback and asks for training.

Topics, tables and agents are declared here, in one screen; the counting rules and the
training policy are pure functions in `policy.py`. Tables are backed by changelog topics,
so a restarted worker recovers its counts; if the broker lost everything, the counts are
rebuilt from the store, which is the system of record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.aggregator.policy import Policy, Timing, after_training, apply_feedback, decide
from shared import metrics
from shared.events import (
    FEEDBACK_TOPIC,
    MODEL_READY_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    Counts,
    FeedbackEvent,
    ModelReadyEvent,
    TrainingRequestedEvent,
    encode,
)
from shared.kafka import parse
from shared.settings import get_settings
from shared.store import open_store

log = logging.getLogger(__name__)
settings = get_settings()
policy = Policy.from_settings(settings)

app = faust.App(
    "eduranker-aggregator",
    broker=[f"kafka://{b}" for b in settings.kafka_bootstrap.split(",")],
    store="memory://",
    topic_partitions=settings.kafka_topic_partitions,
    topic_replication_factor=1,
    web_host=settings.host,
    web_port=settings.aggregator_port,
    web_bind=settings.host,
    datadir=str(settings.faust_datadir),
    # Short group timeouts: the embedded broker holds a first join for the rebalance timeout.
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    broker_rebalance_timeout=10.0,
    broker_max_poll_interval=10.0,
    broker_commit_every=50,
    broker_commit_interval=1.0,
)

feedback_topic = app.topic(FEEDBACK_TOPIC, value_serializer="raw", key_serializer="raw")
model_ready_topic = app.topic(MODEL_READY_TOPIC, value_serializer="raw", key_serializer="raw")
training_topic = app.topic(TRAINING_REQUESTED_TOPIC, value_serializer="raw", key_serializer="raw")
# Table writes must happen inside an agent; timers send their work here instead.
control_topic = app.topic("eduranker.aggregator.control.v1", value_serializer="json", internal=True,
                          partitions=1)

# key "counts" → Counts, "timing" → Timing, "request:<event_id>" → the Counts it was sent with
state = app.Table("aggregator-state", default=None, partitions=1)
# event_id → 1: at-least-once delivery means the same event can arrive twice
seen = app.Table("aggregator-seen", default=None, partitions=1)

_rebuild_checked = False


def current_counts() -> Counts:
    return Counts.model_validate(state.get("counts") or {})


def current_timing() -> Timing:
    return Timing(**(state.get("timing") or {}))


def save(counts: Counts | None = None, timing: Timing | None = None) -> None:
    if counts is not None:
        state["counts"] = counts.model_dump()
        metrics.AGG_FEEDBACK.labels("like").set(counts.like)
        metrics.AGG_FEEDBACK.labels("dislike").set(counts.dislike)
        metrics.AGG_SINCE_TRAINING.set(counts.new_since_training)
        metrics.AGG_BALANCE.set(counts.like / counts.total if counts.total else 0)
    if timing is not None:
        state["timing"] = timing.__dict__


async def maybe_request(now: float | None = None) -> None:
    now = now or time.time()
    counts, timing = current_counts(), current_timing()
    reason = decide(counts, timing, policy, now)
    if reason is None:
        return
    event = TrainingRequestedEvent(reason=reason, counts=counts)  # type: ignore[arg-type]
    state[f"request:{event.event_id}"] = counts.model_dump()
    save(timing=Timing(last_request_at=now, pending_since=now, last_training_at=timing.last_training_at))
    await training_topic.send(key=b"training", value=encode(event))
    metrics.AGG_TRAINING_REQUESTS.labels(reason).inc()
    log.info("event=training_requested event_id=%s reason=%s new=%d total=%d",
             event.event_id, reason, counts.new_since_training, counts.total)


@app.agent(feedback_topic)
async def count_feedback(stream: Any) -> None:
    async for payload in stream:
        event = parse(FEEDBACK_TOPIC, payload)
        if not isinstance(event, FeedbackEvent):
            continue
        if seen.get(event.event_id):
            metrics.AGG_DUPLICATES.inc()
            continue
        seen[event.event_id] = 1
        save(counts=apply_feedback(current_counts(), event.label, event.previous_label))
        await maybe_request()


@app.agent(model_ready_topic)
async def training_done(stream: Any) -> None:
    async for payload in stream:
        event = parse(MODEL_READY_TOPIC, payload)
        if not isinstance(event, ModelReadyEvent) or not event.request_event_id:
            continue
        key = f"request:{event.request_event_id}"
        snapshot = state.get(key)
        if snapshot is None:
            continue  # already handled, or a request this aggregator never sent (manual)
        timing = current_timing()
        if event.decision in ("promoted", "rejected"):
            save(counts=after_training(current_counts(), Counts.model_validate(snapshot)),
                 timing=Timing(last_request_at=timing.last_request_at, last_training_at=time.time()))
        else:
            save(timing=Timing(last_request_at=timing.last_request_at,
                               last_training_at=timing.last_training_at))
        del state[key]
        log.info("event=training_done request=%s decision=%s", event.request_event_id, event.decision)
        await maybe_request()


@app.agent(control_topic)
async def control(stream: Any) -> None:
    async for command in stream:
        if command.get("op") == "rebuild" and current_counts().total == 0:
            counts = Counts.model_validate(command["counts"])
            save(counts=counts, timing=Timing(last_training_at=command["last_training_at"]))
            log.warning("event=counts_rebuilt_from_store total=%d new=%d", counts.total,
                        counts.new_since_training)
        await maybe_request()


@app.timer(interval=2.0)
async def housekeeping() -> None:
    """Rebuild from the store once if our state is empty, and let the schedule fire."""
    global _rebuild_checked
    if app.rebalancing:
        return
    if not _rebuild_checked:
        _rebuild_checked = True
        if current_counts().total == 0:
            command = await counts_from_store()
            if command:
                await control_topic.send(value=command)
                return
    if policy.schedule_s:
        await control_topic.send(value={"op": "tick"})


async def counts_from_store() -> dict[str, Any] | None:
    """What the store says the counts are: the system of record, after a broker lost its data."""
    store = await open_store(settings.store_url)
    try:
        feedback = await store.list_feedback(include_test=True)
        runs = await store.list_training_runs(limit=50)
    finally:
        await store.close()
    if not feedback:
        return None
    finished = [r.finished_at for r in runs if r.status in ("promoted", "rejected") and r.finished_at]
    last = max(finished, default=None)
    counts = Counts()
    for f in feedback:
        counts = apply_feedback(counts, f.label, None)
    new = [f for f in feedback if last is None or f.updated_at > last]
    counts.new_since_training = len(new)
    counts.new_like = sum(f.label == "like" for f in new)
    counts.new_dislike = len(new) - counts.new_like
    return {"op": "rebuild", "counts": counts.model_dump(),
            "last_training_at": last.timestamp() if last else 0.0}


def snapshot() -> dict[str, Any]:
    timing = current_timing()
    return {"counts": current_counts().model_dump(), "timing": timing.__dict__,
            "pending_request": bool(timing.pending_since), "policy": policy.__dict__}


@app.page("/stats")
async def stats_view(web: Any, request: Any) -> Any:
    return web.json(snapshot())


@app.page("/health")
async def health_view(web: Any, request: Any) -> Any:
    return web.json({"status": "ok", "service": "aggregator"})


@app.page("/ready")
async def ready_view(web: Any, request: Any) -> Any:
    ready = not app.rebalancing and _rebuild_checked
    return web.json({"ready": ready}, status=200 if ready else 503)


@app.page("/metrics")
async def metrics_view(web: Any, request: Any) -> Any:
    return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
