"""The aggregator's work, one object: its counts, the running experiment, recovery from the store.

`app.py` wires it to Faust (topics, agents, timers, pages); everything it decides is here, read
top to bottom. The counting rules and the training policy are pure functions in `policy.py`,
the table's layout in `table.py`.

Exactly once, under at-least-once delivery:
- Every event carries an id; ids already counted are kept for
  `EDURANKER_AGGREGATOR_DEDUP_WINDOW_S` (7 days: longer than a topic keeps a message, so no
  redelivery can come later), then expired, so the table stays bounded. Events are counted in
  batches (`count`), each one a commit of the table (`table.py`).
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
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from services.aggregator.experiment import Tracker, credit, recounted
from services.aggregator.policy import Policy, evaluate
from services.aggregator.table import State
from shared import metrics
from shared.events import (
    EXPERIMENT_DECIDED_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    ExperimentDecidedEvent,
    FeedbackEvent,
    InteractionEvent,
    ModelReadyEvent,
    TrainingRequestedEvent,
)
from shared.feedback_counts import (
    apply_feedback,
    apply_fresh,
    apply_fresh_interaction,
    apply_interaction,
    apply_to_versions,
    count_feedback,
    describe,
    describe_interactions,
    last_training,
)
from shared.messaging.codec import decode_or_reason, encode
from shared.messaging.deadletters import DEADLETTER_TOPIC, set_aside
from shared.records import Counts
from shared.settings import Settings
from shared.store import Store, StoreUnavailableError, store_from

log = logging.getLogger("services.aggregator.app")

RECOVER_LOOKBACK_S = 600.0  # first start: how far back the outbox is checked for undelivered events

Publish = Callable[[str, bytes | None, bytes], Awaitable[None]]
"""Sends (topic, key, value) through the worker's producer."""


class Aggregator:
    """Counts feedback and interactions once, tracks the running experiment, asks for training when
    the policy says."""

    def __init__(self, settings: Settings, state: State, publish: Publish,
                 settled: Callable[[], bool]) -> None:
        self.settings = settings
        self.policy = Policy.from_settings(settings)
        self.state = state
        self.publish = publish
        self.settled = settled  # False while Faust rebalances or restores the table
        self.tracker = Tracker()  # the running online experiment (experiment.py)
        self.lock = asyncio.Lock()
        self.dedup_window_s = settings.aggregator_dedup_window_s
        self.recover_after_s = settings.aggregator_recover_after_s
        self.purge_every_s = min(3600.0, self.dedup_window_s / 10)
        self._store: Store | None = None
        self._recover_cursor: datetime | None = None
        self._checked: set[str] = set()  # the event ids the last recovery pass read
        self._last_purge = time.monotonic()

    async def store(self) -> Store:
        if self._store is None:
            self._store = await store_from(self.settings)
        return self._store

    async def close(self) -> None:
        """The store's connection thread would otherwise keep the process from exiting."""
        if self._store is not None:
            db, self._store = self._store, None
            await db.close()

    def export(self, counts: Counts, versions: dict[str, dict[str, int]]) -> None:
        metrics.AGG_FEEDBACK.labels("like").set(counts.like)
        metrics.AGG_FEEDBACK.labels("dislike").set(counts.dislike)
        metrics.AGG_SINCE_TRAINING.set(counts.new_since_training)
        metrics.AGG_BALANCE.set(counts.like / counts.total if counts.total else 0)
        for version, by_label in versions.items():
            for label, n in by_label.items():
                metrics.AGG_BY_VERSION.labels(version, label).set(n)
        metrics.AGG_DEDUP_ENTRIES.set(self.state.seen_entries())

    async def rebuild(self, reason: str) -> None:
        """Counts := what the store holds now; the events that read reflects will not count again."""
        state, db = self.state, await self.store()
        runs = await db.list_training_runs(limit=50)
        await self.tracker.refresh(db)  # before the snapshot: feedback on an experiment follows its start
        snapshot = await db.feedback_snapshot(datetime.now(UTC) - timedelta(seconds=self.dedup_window_s))
        since, finished = last_training(runs)
        counts, versions, fresh = count_feedback(snapshot.feedback, since, snapshot.interactions)
        now = time.time()
        state.replace(counts, versions, fresh, snapshot.event_ids, now,
                      recounted(self.tracker.running, snapshot.feedback, snapshot.interactions))
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
        self.export(counts, versions)
        metrics.AGG_REBUILDS.labels(reason).inc()
        log.warning("event=counts_rebuilt_from_store reason=%s total=%d new=%d events_marked=%d",
                    reason, counts.total, counts.new_since_training, len(snapshot.event_ids))

    async def ensure_started(self) -> bool:
        """Rebuild once when the table holds no counts; False while the store cannot be read."""
        if self.state.get("origin") is not None:
            return True
        try:
            await self.rebuild("start")
        except StoreUnavailableError as exc:
            log.warning("event=rebuild_postponed error=%s", exc)
            return False
        return True

    async def count(self, events: list[FeedbackEvent | InteractionEvent], source: str) -> int:
        """Counts each feedback or interaction event once (returns how many were new); the caller
        holds `lock`.

        One at a time in memory, with the policy and the experiment's test asked after each, as if
        counted alone; the table gets one commit for them all (`State.batch`), or one before a
        request or a decision goes out, so nothing is published that the table does not hold.
        """
        state = self.state
        if not await self.ensure_started():
            return 0  # the rebuild that follows reads these changes from the store
        counted = 0
        with state.batch():
            for event in events:
                counted += await self._count_one(event, source)
        if counted:
            self.export(*state.tally()[:2])
        return counted

    async def _count_one(self, event: FeedbackEvent | InteractionEvent, source: str) -> int:
        state = self.state
        if state.seen(event.event_id):
            metrics.AGG_DUPLICATES.inc()
            return 0
        counts, versions, _ = state.tally()
        at = event.occurred_at.timestamp()
        if isinstance(event, FeedbackEvent):
            record_id = event.feedback_id
            counts = apply_feedback(counts, event.label, event.previous_label)
            versions = apply_to_versions(versions, event.model_version, event.label, event.previous_label)
            counts, fresh = apply_fresh(counts, state.fresh(record_id), event.label, at)
        else:
            record_id = event.interaction_id
            counts = apply_interaction(counts, event.opened, event.dwell_s, event.previous_dwell_s)
            counts, fresh = apply_fresh_interaction(counts, state.fresh(record_id), at)
        credited = credit(state, event, await self.tracker.running_for(await self.store(), event))
        now = time.time()
        state.record(counts, versions, event.event_id, (record_id, fresh) if fresh else None, now, credited)
        timing = state.timing()
        if not timing.counting_since:
            state.set_timing(replace(timing, counting_since=now))
        metrics.AGG_COUNT_DELAY.observe(max(0.0, now - event.occurred_at.timestamp()))
        if source != "broker":
            metrics.AGG_RECOVERED.inc()
        if credited is not None:
            await self.tracker.decide(state, self.send_decision, datetime.now(UTC))
        await self.maybe_request(now)
        return 1

    async def send_decision(self, event: ExperimentDecidedEvent) -> None:
        self.state.commit()  # the counts that decided it first
        await self.publish(EXPERIMENT_DECIDED_TOPIC, b"experiment", encode(event))

    async def maybe_request(self, now: float | None = None) -> None:
        now = now or time.time()
        counts, timing = self.state.tally()[0], self.state.timing()
        reason = evaluate(counts, timing, self.policy, now, self.tracker.running,
                          self.tracker.toward_minimum(self.state)).reason
        if reason is None:
            return
        self.state.commit()  # the counts that crossed the threshold first
        event = TrainingRequestedEvent(reason=reason, counts=counts)  # type: ignore[arg-type]
        self.state.set_timing(replace(timing, last_request_at=now, pending_since=now,
                                      pending_request=event.event_id, retry_at=0.0))
        await self.publish(TRAINING_REQUESTED_TOPIC, b"training", encode(event))
        metrics.AGG_TRAINING_REQUESTS.labels(reason).inc()
        log.info("event=training_requested event_id=%s reason=%s new=%d total=%d",
                 event.event_id, reason, counts.new_since_training, counts.total)

    async def training_reported(self, event: ModelReadyEvent) -> None:
        """A finished run: recount "since the last training" from the store; free the pending slot."""
        state = self.state
        if not await self.ensure_started() or state.seen(event.event_id):
            return
        now = time.time()
        if event.occurred_at.timestamp() <= (state.get("origin") or {}).get("at", 0):
            state.mark_seen(event.event_id, now)  # replayed after a rebuild that already read its run
            return
        if event.decision in ("promoted", "challenger", "rejected"):
            try:
                await self.rebuild("training")
            except StoreUnavailableError as exc:
                log.warning("event=rebuild_failed reason=training error=%s", exc)
        else:
            await self.tracker.refresh(await self.store())
        timing = state.timing()
        if event.request_event_id and event.request_event_id == timing.pending_request:
            # A skipped or failed run is asked again after the pending timeout, not at once.
            failed = event.decision in ("skipped", "failed")
            retry_at = now + self.policy.pending_timeout_s if failed else 0.0
            state.set_timing(replace(timing, pending_since=0.0, pending_request="", retry_at=retry_at))
        state.mark_seen(event.event_id, now)
        log.info("event=training_reported request=%s decision=%s version=%s",
                 event.request_event_id, event.decision, event.version)
        await self.maybe_request()

    async def set_aside(self, message: Any, reason: str) -> None:
        """A message no code can use goes to the dead-letter topic with the reason; counting goes on."""
        await self.publish(DEADLETTER_TOPIC, message.key, set_aside(
            message.topic, message.value, reason, message.partition, message.offset))

    async def on_messages(self, topic: str, messages: list[tuple[bytes, Any]]) -> None:
        """Messages of the feedback, interaction or model-ready topic, (value, message) in order:
        decoded, then counted (together) or reported; malformed ones are set aside."""
        feedback: list[FeedbackEvent | InteractionEvent] = []
        for value, message in messages:
            decoded = decode_or_reason(topic, value)
            if isinstance(decoded, str):
                await self.set_aside(message, decoded)
            elif isinstance(decoded, FeedbackEvent | InteractionEvent):
                feedback.append(decoded)
            elif isinstance(decoded, ModelReadyEvent):
                async with self.lock:
                    await self.training_reported(decoded)
        if feedback:
            async with self.lock:
                await self.count(feedback, "broker")

    async def housekeeping(self) -> None:
        """Start-up rebuild, undelivered events, expiry of old ids, and the schedule."""
        if not self.settled():
            return
        async with self.lock:
            if not await self.ensure_started():
                return
        try:
            await self.recover_undelivered()
            async with self.lock:
                await self.tracker.refresh(await self.store())
                await self.tracker.decide(self.state, self.send_decision, datetime.now(UTC))
        except StoreUnavailableError as exc:
            log.warning("event=recovery_check_failed error=%s", exc)
        if time.monotonic() - self._last_purge >= self.purge_every_s:
            self._last_purge = time.monotonic()
            async with self.lock:
                removed = self.state.expire_seen(time.time() - self.dedup_window_s)
                running = self.tracker.running
                self.state.forget_experiments(keep=running.experiment_id if running else None)
            metrics.AGG_DEDUP_ENTRIES.set(self.state.seen_entries())
            if removed:
                log.info("event=dedup_expired removed=%d kept=%d", removed, self.state.seen_entries())
        async with self.lock:
            await self.maybe_request()

    async def recover_undelivered(self, page: int = 1000) -> None:
        """Counts published events still unseen `recover_after_s` after their publication.

        Reads the outbox from where the last check stopped (kept in the table, so a restart checks
        its downtime too, at most half the dedup window back) and re-reads the last
        `recover_after_s` each time, so an event whose publication was recorded late is not skipped.
        """
        state, db, now = self.state, await self.store(), datetime.now(UTC)
        if self._recover_cursor is None:
            saved = state.get("recovered_through")
            self._recover_cursor = datetime.fromtimestamp(saved, UTC) if saved else now - timedelta(
                seconds=RECOVER_LOOKBACK_S)
        late = timedelta(seconds=self.recover_after_s)
        until = now - late
        after = max(self._recover_cursor - late, now - timedelta(seconds=self.dedup_window_s / 2))
        after_id, recovered, checked = "", 0, set[str]()
        while True:
            ids = await db.published_event_ids(after, until, limit=page, after_id=after_id)
            # Ids the last pass read are seen (or were counted then): only the others are looked up.
            unseen = [i for i, _ in ids if i not in self._checked and not state.seen(i)]
            checked.update(i for i, _ in ids)
            if unseen:
                entries = await db.outbox_events(unseen)
                decoded = (decode_or_reason(e.topic, e.payload.encode()) for e in entries)
                events = [event for event in decoded if isinstance(event, FeedbackEvent | InteractionEvent)]
                async with self.lock:
                    recovered += await self.count(events, "store")
            if len(ids) < page:
                break
            after_id, after = ids[-1]
        self._checked = checked
        if recovered:
            log.warning("event=feedback_recovered_from_store count=%d through=%s", recovered,
                        until.isoformat())
        if until - self._recover_cursor >= timedelta(seconds=10) or recovered:
            async with self.lock:
                state.set("recovered_through", until.timestamp())
        self._recover_cursor = until

    def snapshot(self, worker: dict[str, bool]) -> dict[str, Any]:
        """`/stats`: counts, the policy's verdict and why, timing, the experiment, the worker's state."""
        state, tracker = self.state, self.tracker
        counts, versions, _ = state.tally()
        timing = state.timing()
        verdict = evaluate(counts, timing, self.policy, time.time(), tracker.running,
                           tracker.toward_minimum(state))
        last = datetime.fromtimestamp(timing.last_training_at, UTC) if timing.last_training_at else None
        return {
            "feedback": describe(counts, versions, last),
            "interactions": describe_interactions(counts),
            "counts": counts.model_dump(),
            "policy": {**asdict(self.policy), "decision": verdict.reason, "blocked_by": verdict.blocked_by},
            "timing": asdict(timing),
            "pending_request": bool(timing.pending_since),
            "dedup": {"entries": state.seen_entries(), "window_s": self.dedup_window_s},
            "origin": state.get("origin"),
            "experiment": tracker.view(state, datetime.now(UTC)),
            "worker": worker,
        }

    def ready(self) -> bool:
        return self.settled() and self.state.get("origin") is not None
