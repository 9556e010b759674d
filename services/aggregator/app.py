"""Aggregator: a faust-streaming app that counts feedback and asks for training.

Topics, the table, agents and the timer are declared here, in one screen; the counting rules
and the training policy are pure functions in `policy.py`, the table's layout in `table.py`.

Exactly once, under at-least-once delivery:
- Every event carries an id; ids already counted are kept for
  `EDURANKER_AGGREGATOR_DEDUP_WINDOW_S` (7 days: longer than a topic keeps a message, so no
  redelivery can come later), then expired, so the table stays bounded.
- The store is the system of record. When the table holds no counts (first start, or a broker
  that lost the changelog), they are rebuilt from a consistent read of the store, and the ids
  of the events that read already reflects are marked as seen. When the trainer reports a run
  they are rebuilt too, so "since the last training" is what the store says.
- A published event the broker never delivers (a memory-only broker restarted) is counted from
  the store's outbox once it is `EDURANKER_AGGREGATOR_RECOVER_AFTER_S` old.

Work that writes the table (agents, timer) holds one lock, so a rebuild never interleaves
with a count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.aggregator.experiment import Tracker, credit, recounted
from services.aggregator.policy import (
    Policy,
    apply_feedback,
    apply_fresh,
    apply_to_versions,
    count_feedback,
    describe,
    evaluate,
    last_training,
)
from services.aggregator.table import OnePartitionTable, State
from shared import metrics
from shared.broker import BrokerOutage
from shared.events import (
    EXPERIMENT_DECIDED_TOPIC,
    FEEDBACK_TOPIC,
    MODEL_READY_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    Counts,
    ExperimentDecidedEvent,
    FeedbackEvent,
    ModelReadyEvent,
    TrainingRequestedEvent,
    encode,
)
from shared.kafka import DEADLETTER_TOPIC, dead_letter, decode_or_reason, faust_credentials
from shared.settings import get_settings
from shared.store import Store, StoreUnavailableError, store_from

log = logging.getLogger(__name__)
settings = get_settings()
policy = Policy.from_settings(settings)
DEDUP_WINDOW_S = settings.aggregator_dedup_window_s
RECOVER_AFTER_S = settings.aggregator_recover_after_s
RECOVER_LOOKBACK_S = 600.0  # first start: how far back the outbox is checked for undelivered events
PURGE_EVERY_S = min(3600.0, DEDUP_WINDOW_S / 10)

app = faust.App(
    "eduranker-aggregator",
    broker=[f"kafka://{b}" for b in settings.kafka_bootstrap.split(",")],
    broker_credentials=faust_credentials(settings),  # SASL/SSL: the same settings as every client
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
    # A broker that restarted empty has a changelog shorter than what this worker already
    # wrote; the table in memory is still right (the outbox check counts what the broker
    # lost), so keep running instead of stopping on the mismatch.
    recovery_consistency_check=False,
)

# Faust fixes its consumer's fetch wait at 1.5 s. The embedded broker holds a fetch that found
# nothing for the whole wait instead of answering when data arrives, which added up to 1.5 s
# to every count; 100 ms costs an idle worker ten small requests a second.
FETCH_MAX_WAIT_MS = 100
_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def _short_fetch_wait(self: AIOKafkaConsumerThread, transport: Any) -> Any:
    consumer = _create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start(), which comes later
    return consumer


AIOKafkaConsumerThread._create_worker_consumer = _short_fetch_wait  # type: ignore[method-assign]

feedback_topic = app.topic(FEEDBACK_TOPIC, value_serializer="raw", key_serializer="raw")
model_ready_topic = app.topic(MODEL_READY_TOPIC, value_serializer="raw", key_serializer="raw")
training_topic = app.topic(TRAINING_REQUESTED_TOPIC, value_serializer="raw", key_serializer="raw")
deadletter_topic = app.topic(DEADLETTER_TOPIC, value_serializer="raw", key_serializer="raw")
decided_topic = app.topic(EXPERIMENT_DECIDED_TOPIC, value_serializer="raw", key_serializer="raw")

state = State(app.tables.add(OnePartitionTable(app, name="aggregator-state", default=None, partitions=1,
                                               beacon=app.tables.beacon)))

lock = asyncio.Lock()
outage = BrokerOutage(settings, "aggregator")  # aiokafka retries in silence (shared.logging)
_store: Store | None = None
_recover_cursor: datetime | None = None
_last_purge = time.monotonic()
tracker = Tracker()  # the running online experiment (services/aggregator/experiment.py)


def settled() -> bool:
    """False while Faust rebalances or restores the table from its changelog."""
    return not (app.rebalancing or app.in_recovery) and app.tables.recovery.completed.is_set()


def export(counts: Counts, versions: dict[str, dict[str, int]]) -> None:
    metrics.AGG_FEEDBACK.labels("like").set(counts.like)
    metrics.AGG_FEEDBACK.labels("dislike").set(counts.dislike)
    metrics.AGG_SINCE_TRAINING.set(counts.new_since_training)
    metrics.AGG_BALANCE.set(counts.like / counts.total if counts.total else 0)
    for version, by_label in versions.items():
        for label, n in by_label.items():
            metrics.AGG_BY_VERSION.labels(version, label).set(n)
    metrics.AGG_DEDUP_ENTRIES.set(state.seen_entries())


async def store() -> Store:
    global _store
    if _store is None:
        _store = await store_from(settings)
    return _store


@app.on_before_shutdown.connect
async def close_store(app: Any, **kwargs: Any) -> None:
    """The store's connection thread would otherwise keep the process from exiting."""
    global _store
    if _store is not None:
        db, _store = _store, None
        await db.close()


async def rebuild(reason: str) -> None:
    """Counts := what the store holds now; the events that read reflects will not count again."""
    db = await store()
    runs = await db.list_training_runs(limit=50)
    await tracker.refresh(db)  # before the snapshot: feedback on an experiment follows its start
    snapshot = await db.feedback_snapshot(datetime.now(UTC) - timedelta(seconds=DEDUP_WINDOW_S))
    since, finished = last_training(runs)
    counts, versions, fresh = count_feedback(snapshot.feedback, since)
    now = time.time()
    state.replace(counts, versions, fresh, snapshot.event_ids, now,
                  recounted(tracker.running, snapshot.feedback))
    timing = state.timing()
    first = min((f.created_at for f in snapshot.feedback), default=None)
    timing = replace(timing, last_training_at=finished.timestamp() if finished else 0.0,
                     counting_since=timing.counting_since or (first.timestamp() if first else 0.0))
    running = [r for r in runs if r.status == "running" and r.request_event_id]
    if running and not timing.pending_since:  # a request sent before the table was lost
        timing = replace(timing, pending_since=running[0].started_at.timestamp(),
                         pending_request=running[0].request_event_id or "")
    state.set_timing(timing)
    state.set("origin", {"reason": reason, "at": now, "feedback": counts.total})  # last: done
    export(counts, versions)
    metrics.AGG_REBUILDS.labels(reason).inc()
    log.warning("event=counts_rebuilt_from_store reason=%s total=%d new=%d events_marked=%d",
                reason, counts.total, counts.new_since_training, len(snapshot.event_ids))


async def ensure_started() -> bool:
    """Rebuild once when the table holds no counts; False while the store cannot be read."""
    if state.get("origin") is not None:
        return True
    try:
        await rebuild("start")
    except StoreUnavailableError as exc:
        log.warning("event=rebuild_postponed error=%s", exc)
        return False
    return True


async def count(event: FeedbackEvent, source: str) -> int:
    """Counts one feedback event once (returns 1, or 0 for a duplicate); the caller holds `lock`."""
    if not await ensure_started():
        return 0  # the rebuild that follows reads this change from the store
    if state.seen(event.event_id):
        metrics.AGG_DUPLICATES.inc()
        return 0
    counts, versions, _ = state.tally()
    counts = apply_feedback(counts, event.label, event.previous_label)
    versions = apply_to_versions(versions, event.model_version, event.label, event.previous_label)
    counts, fresh = apply_fresh(counts, state.fresh(event.feedback_id), event.label,
                                event.occurred_at.timestamp())
    credited = credit(state, event, await tracker.running_for(await store(), event))
    now = time.time()
    state.record(counts, versions, event.event_id, (event.feedback_id, fresh) if fresh else None, now,
                 credited)
    timing = state.timing()
    if not timing.counting_since:
        state.set_timing(replace(timing, counting_since=now))
    export(counts, versions)
    metrics.AGG_COUNT_DELAY.observe(max(0.0, now - event.occurred_at.timestamp()))
    if source != "broker":
        metrics.AGG_RECOVERED.inc()
    if credited is not None:
        await tracker.decide(state, send_decision, datetime.now(UTC))
    await maybe_request(now)
    return 1


async def send_decision(event: ExperimentDecidedEvent) -> None:
    await decided_topic.send(key=b"experiment", value=encode(event))


async def maybe_request(now: float | None = None) -> None:
    now = now or time.time()
    counts, timing = state.tally()[0], state.timing()
    reason = evaluate(counts, timing, policy, now, tracker.running, tracker.toward_minimum(state)).reason
    if reason is None:
        return
    event = TrainingRequestedEvent(reason=reason, counts=counts)  # type: ignore[arg-type]
    state.set_timing(replace(timing, last_request_at=now, pending_since=now, pending_request=event.event_id,
                             retry_at=0.0))
    await training_topic.send(key=b"training", value=encode(event))
    metrics.AGG_TRAINING_REQUESTS.labels(reason).inc()
    log.info("event=training_requested event_id=%s reason=%s new=%d total=%d",
             event.event_id, reason, counts.new_since_training, counts.total)


async def training_reported(event: ModelReadyEvent) -> None:
    """A finished run: recount "since the last training" from the store; free the pending slot."""
    if not await ensure_started() or state.seen(event.event_id):
        return
    now = time.time()
    if event.occurred_at.timestamp() <= (state.get("origin") or {}).get("at", 0):
        state.mark_seen(event.event_id, now)  # replayed after a rebuild that already read its run
        return
    if event.decision in ("promoted", "challenger", "rejected"):
        try:
            await rebuild("training")
        except StoreUnavailableError as exc:
            log.warning("event=rebuild_failed reason=training error=%s", exc)
    else:
        await tracker.refresh(await store())
    timing = state.timing()
    if event.request_event_id and event.request_event_id == timing.pending_request:
        # A skipped or failed run is asked again after the pending timeout, not at once.
        retry_at = now + policy.pending_timeout_s if event.decision in ("skipped", "failed") else 0.0
        state.set_timing(replace(timing, pending_since=0.0, pending_request="", retry_at=retry_at))
    state.mark_seen(event.event_id, now)
    log.info("event=training_reported request=%s decision=%s version=%s",
             event.request_event_id, event.decision, event.version)
    await maybe_request()


async def set_aside(message: Any, reason: str) -> None:
    """A message no code can use goes to the dead-letter topic with the reason; counting goes on."""
    metrics.DEADLETTER.labels(message.topic).inc()
    log.error("event=dead_letter topic=%s partition=%s offset=%s reason=%s",
              message.topic, message.partition, message.offset, reason)
    await deadletter_topic.send(key=message.key, value=dead_letter(
        message.topic, message.value, reason, message.partition, message.offset))


@app.agent(feedback_topic)
async def count_feedback_events(stream: Any) -> None:
    async for event in stream.events():
        decoded = decode_or_reason(FEEDBACK_TOPIC, event.value)
        if isinstance(decoded, str):
            await set_aside(event.message, decoded)
            continue
        async with lock:
            await count(decoded, "broker")  # type: ignore[arg-type]


@app.agent(model_ready_topic)
async def training_done(stream: Any) -> None:
    async for event in stream.events():
        decoded = decode_or_reason(MODEL_READY_TOPIC, event.value)
        if isinstance(decoded, str):
            await set_aside(event.message, decoded)
            continue
        async with lock:
            await training_reported(decoded)  # type: ignore[arg-type]


@app.timer(interval=1.0)
async def housekeeping() -> None:
    """Start-up rebuild, undelivered events, expiry of old ids, and the schedule."""
    global _last_purge
    if not settled():
        return
    async with lock:
        if not await ensure_started():
            return
    try:
        await recover_undelivered()
        async with lock:
            await tracker.refresh(await store())
            await tracker.decide(state, send_decision, datetime.now(UTC))
    except StoreUnavailableError as exc:
        log.warning("event=recovery_check_failed error=%s", exc)
    if time.monotonic() - _last_purge >= PURGE_EVERY_S:
        _last_purge = time.monotonic()
        async with lock:
            removed = state.expire_seen(time.time() - DEDUP_WINDOW_S)
            state.forget_experiments(keep=tracker.running.experiment_id if tracker.running else None)
        metrics.AGG_DEDUP_ENTRIES.set(state.seen_entries())
        if removed:
            log.info("event=dedup_expired removed=%d kept=%d", removed, state.seen_entries())
    async with lock:
        await maybe_request()


@app.timer(interval=outage.probe_every_s)
async def watch_broker() -> None:
    await asyncio.to_thread(outage.check)


async def recover_undelivered(page: int = 1000) -> None:
    """Counts published events still unseen `RECOVER_AFTER_S` after their publication.

    Reads the outbox from where the last check stopped (kept in the table, so a restart checks
    its downtime too, at most half the dedup window back) and re-reads the last
    `RECOVER_AFTER_S` each time, so an event whose publication was recorded late is not skipped.
    """
    global _recover_cursor
    db = await store()
    now = datetime.now(UTC)
    if _recover_cursor is None:
        saved = state.get("recovered_through")
        _recover_cursor = datetime.fromtimestamp(saved, UTC) if saved else now - timedelta(
            seconds=RECOVER_LOOKBACK_S)
    until = now - timedelta(seconds=RECOVER_AFTER_S)
    after = max(_recover_cursor - timedelta(seconds=RECOVER_AFTER_S),
                now - timedelta(seconds=DEDUP_WINDOW_S / 2))
    after_id, recovered = "", 0
    while True:
        entries = await db.published_events(after, until, limit=page, after_id=after_id)
        for entry in entries:
            if state.seen(entry.event_id):
                continue
            decoded = decode_or_reason(entry.topic, entry.payload.encode())
            if isinstance(decoded, FeedbackEvent):
                async with lock:
                    recovered += await count(decoded, "store")
        if len(entries) < page:
            break
        after, after_id = entries[-1].published_at or until, entries[-1].event_id
    if recovered:
        log.warning("event=feedback_recovered_from_store count=%d through=%s", recovered, until.isoformat())
    if until - _recover_cursor >= timedelta(seconds=10) or recovered:
        async with lock:
            state.set("recovered_through", until.timestamp())
    _recover_cursor = until


def snapshot() -> dict[str, Any]:
    counts, versions, _ = state.tally()
    timing = state.timing()
    verdict = evaluate(counts, timing, policy, time.time(), tracker.running, tracker.toward_minimum(state))
    last = datetime.fromtimestamp(timing.last_training_at, UTC) if timing.last_training_at else None
    return {
        "feedback": describe(counts, versions, last),
        "counts": counts.model_dump(),
        "policy": {**asdict(policy), "decision": verdict.reason, "blocked_by": verdict.blocked_by},
        "timing": asdict(timing),
        "pending_request": bool(timing.pending_since),
        "dedup": {"entries": state.seen_entries(), "window_s": DEDUP_WINDOW_S},
        "origin": state.get("origin"),
        "experiment": tracker.view(state, datetime.now(UTC)),
        "worker": {"rebalancing": bool(app.rebalancing), "recovering": bool(app.in_recovery),
                   "settled": settled()},
    }


@app.page("/stats")
async def stats_view(web: Any, request: Any) -> Any:
    return web.json(snapshot())


@app.page("/health")
async def health_view(web: Any, request: Any) -> Any:
    return web.json({"status": "ok", "service": "aggregator"})


@app.page("/ready")
async def ready_view(web: Any, request: Any) -> Any:
    ready = settled() and state.get("origin") is not None
    return web.json({"ready": ready}, status=200 if ready else 503)


@app.page("/metrics")
async def metrics_view(web: Any, request: Any) -> Any:
    return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

