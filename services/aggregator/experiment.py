"""The aggregator's part in online experiments: credit each interleaved action once, ask the test.

The running experiment comes from the store (the trainer records it). Its tally lives in the
aggregator's table with the other counts and is written in the same commit record, so the
exactly-once rules of `table.py` hold for it too; a rebuild from the store recounts it from
the same consistent read as the other counts. The first feedback of a new experiment makes the
tally count for it, from zero: no feedback of it can have been counted before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from services.aggregator.table import ExperimentCredit, Recount, State
from shared import metrics
from shared.events import ExperimentDecidedEvent, FeedbackEvent, InteractionEvent
from shared.evidence.outcomes import open_value, rating_value
from shared.online.credit import Live, rated, recount, share_of, unit_key
from shared.online.decision import Limits, Verdict, describe, judge
from shared.records import Experiment, Feedback, Interaction
from shared.store import Store

log = logging.getLogger(__name__)


def impression_key(experiment_id: str, unit: str) -> str:
    """The table key of a unit's credit (one voice on one query: `shared.online.credit.unit_key`)."""
    return f"imp:{experiment_id}:{unit}"


def query_entry(experiment_id: str, query_key: str) -> str:
    return f"q:{experiment_id}:{query_key}"


def value_change(event: FeedbackEvent | InteractionEvent) -> float:
    """How much the event changes its result's value (a label replaced, an open's dwell reported)."""
    if isinstance(event, FeedbackEvent):
        return rating_value(event.label) - rating_value(event.previous_label)
    before = 0.0 if event.opened else open_value(event.previous_dwell_s)
    return open_value(event.dwell_s) - before


def credit(state: State, event: FeedbackEvent | InteractionEvent,
           running: Experiment | None) -> tuple[str, Live, ExperimentCredit] | None:
    """What counting `event` does to the running experiment (None: not one of its results)."""
    tagged = event.interleaved
    if tagged is None or running is None or tagged.experiment_id != running.experiment_id:
        return None
    counting, live = state.live()
    if counting != running.experiment_id:
        state.adopt(running.experiment_id)
        live = Live()
    unit = unit_key(event.user_id, event.session_id, event.inference_id, tagged.query_key)
    impression = impression_key(running.experiment_id, unit)
    query = query_entry(running.experiment_id, tagged.query_key)
    live, credit_after, query_after = live.credited(state.credit(impression), state.credit(query),
                                                    share_of(tagged.team, tagged.share), value_change(event))
    return running.experiment_id, live, (impression, credit_after, query, query_after)


def recounted(experiment: Experiment | None, feedback: Iterable[Feedback],
              interactions: Iterable[Interaction] = ()) -> Recount | None:
    """The experiment's tally and credit entries from stored actions (a rebuild's read)."""
    if experiment is None:
        return None
    experiment_id = experiment.experiment_id

    def mine(actions: Iterable[Feedback | Interaction]) -> list:
        return [a for a in actions
                if a.interleaved is not None and a.interleaved.experiment_id == experiment_id]

    tally, credits = recount(rated(mine(feedback), mine(interactions)))
    entries: dict[str, tuple[int, ...]] = {impression_key(experiment_id, i): c for i, c in credits.items()}
    entries |= {query_entry(experiment_id, q): c for q, c in tally.queries.items()}
    return experiment_id, Live.of(tally), entries


def verdict(state: State, running: Experiment, impressions: int, now: datetime) -> Verdict:
    counting, live = state.live()
    tally = live.tally() if counting == running.experiment_id else Live().tally()
    return judge(Limits.of(running), tally, impressions, running.started_at, now)


def view(state: State, running: Experiment | None, impressions: int, now: datetime) -> dict[str, Any] | None:
    """The experiment in the aggregator's `/stats` (the collector shows the store's recount alike)."""
    if running is None:
        return None
    counting, live = state.live()
    tally = live.tally() if counting == running.experiment_id else Live().tally()
    return describe(running, tally, impressions, now)


def export(running: Experiment | None, result: Verdict | None) -> None:
    for kind in ("challenge", "watch"):
        metrics.EXPERIMENT_RUNNING.labels(kind).set(1 if running is not None and running.kind == kind else 0)
    facts = result.evidence if result is not None else {}
    metrics.EXPERIMENT_IMPRESSIONS_LOGGED.set(facts.get("impressions", 0))
    metrics.EXPERIMENT_P_VALUE.set(facts.get("p_value", 1.0))
    for outcome, key in (("champion", "champion_wins"), ("challenger", "challenger_wins"), ("tie", "ties")):
        metrics.EXPERIMENT_OUTCOMES.labels(outcome).set(facts.get(key, 0))


def decision_event(running: Experiment, result: Verdict) -> ExperimentDecidedEvent:
    assert result.decision is not None
    return ExperimentDecidedEvent(experiment_id=running.experiment_id, kind=running.kind,
                                  champion=running.champion, challenger=running.challenger,
                                  decision=result.decision, reason=result.reason, evidence=result.evidence)


class Tracker:
    """Which experiment runs (from the store) and how many impressions it has logged; asks the
    test after each credited feedback and every second, and publishes users' decision once."""

    def __init__(self) -> None:
        self.running: Experiment | None = None
        self.impressions = 0
        self._not_running: set[str] = set()

    async def refresh(self, db: Store) -> None:
        self.running = await db.running_experiment()
        self.impressions = await db.count_impressions(self.running.experiment_id) if self.running else 0

    async def running_for(self, db: Store, event: FeedbackEvent | InteractionEvent) -> Experiment | None:
        """The running experiment, read again when an event names one not known yet (it just started)."""
        tagged = event.interleaved
        known = self.running.experiment_id if self.running else None
        if (tagged is not None and tagged.experiment_id != known
                and tagged.experiment_id not in self._not_running):
            await self.refresh(db)
            if self.running is None or self.running.experiment_id != tagged.experiment_id:
                if len(self._not_running) > 10_000:
                    self._not_running.clear()
                self._not_running.add(tagged.experiment_id)
        return self.running

    async def decide(self, state: State, send: Callable[[ExperimentDecidedEvent], Awaitable[None]],
                     now: datetime) -> None:
        running = self.running
        if running is None:
            export(None, None)
            return
        result = verdict(state, running, self.impressions, now)
        export(running, result)
        if result.decision is None or state.get(f"decided:{running.experiment_id}"):
            return
        event = decision_event(running, result)
        await send(event)
        state.set(f"decided:{running.experiment_id}", {
            "decision": result.decision, "event_id": event.event_id, "reason": result.reason,
            "at": now.timestamp()})
        metrics.EXPERIMENT_DECISIONS.labels(result.decision).inc()
        log.info("event=experiment_decided experiment=%s kind=%s decision=%s reason=%r",
                 running.experiment_id, running.kind, result.decision, result.reason)

    def toward_minimum(self, state: State) -> int:
        """The running experiment's impressions as the training policy counts them: none once users
        decided it, since the trainer is acting on it and the experiment that follows (a watch)
        must get its own minimum first."""
        if self.running is not None and state.get(f"decided:{self.running.experiment_id}"):
            return 0
        return self.impressions

    def view(self, state: State, now: datetime) -> dict[str, Any] | None:
        shown = view(state, self.running, self.impressions, now)
        if shown is not None and self.running is not None:
            shown["decided"] = state.get(f"decided:{self.running.experiment_id}")
        return shown
