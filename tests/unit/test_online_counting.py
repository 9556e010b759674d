"""Online experiments in the aggregator, without a broker: exactly-once credit, the policy, the gate."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.aggregator.experiment import Tracker, credit, recounted
from services.aggregator.policy import Policy, Timing, evaluate
from services.aggregator.table import State
from shared.events import FeedbackEvent
from shared.feedback_counts import apply_feedback
from shared.ml.training.gate import Gate
from shared.online.credit import Live
from shared.records import Counts, Experiment, Feedback, Interleaved
from tests.unit.test_policy import LoggedTable, restore

EXPERIMENT = Experiment(experiment_id="exp1", kind="challenge", champion="v0", challenger="v0001", share=1.0,
                        alpha=0.05, min_impressions=10, max_impressions=1000, max_s=3600.0,
                        started_at=datetime(2026, 1, 1, tzinfo=UTC))


SHARES = (0.0, 0.75, None)  # a champion's result; one the challenger more likely placed; team-draft's


def same(a: tuple[str | None, Live], b: tuple[str | None, Live]) -> bool:
    """Equal tallies: the bettors' log-wealths agree to rounding (summed in another order)."""
    (name_a, live_a), (name_b, live_b) = a, b
    return (name_a == name_b and replace(live_a, stakes=()) == replace(live_b, stakes=())
            and live_a.stakes == pytest.approx(live_b.stakes, abs=1e-9))


def events(n: int, seed: int = 5) -> list[FeedbackEvent]:
    """Likes and dislikes on interleaved results, some changed later, as the collector sends them."""
    rng = random.Random(seed)
    out, latest = [], {}
    while len(out) < n:
        inference, slot = f"inf-{rng.randrange(8)}", rng.randrange(3)
        label = rng.choice(["like", "dislike"])
        previous = latest.get((inference, slot))
        if previous == label:
            continue
        latest[(inference, slot)] = label
        out.append(FeedbackEvent(
            feedback_id=f"fb-{inference}-{slot}", inference_id=inference, resource_id=f"r{slot}", label=label,
            previous_label=previous, rank=slot + 1, model_version="v0",
            interleaved=Interleaved(experiment_id="exp1", team="challenger" if slot % 2 else "champion",
                                    query_key=f"q{int(inference[-1]) % 3}", share=SHARES[slot])))
    return out


def count(state: State, event: FeedbackEvent) -> None:
    """What the aggregator's `count` does to the table, less the broker."""
    if state.seen(event.event_id):
        return
    counts, versions, _ = state.tally()
    counts = apply_feedback(counts, event.label, event.previous_label)
    state.record(counts, versions, event.event_id, None, now=1.0,
                 experiment=credit(state, event, EXPERIMENT))


def stored(stream: list[FeedbackEvent]) -> list[Feedback]:
    """The store's records after the stream: each feedback with its latest label."""
    latest = {e.feedback_id: e for e in stream}
    return [Feedback(feedback_id=e.feedback_id, inference_id=e.inference_id, resource_id=e.resource_id,
                     label=e.label, rank=e.rank, model_version="v0", interleaved=e.interleaved)
            for e in latest.values()]


def test_the_live_tally_equals_the_stores_recount() -> None:
    stream = events(60)
    state = State({})
    for event in stream:
        count(state, event)
    _, live, entries = recounted(EXPERIMENT, stored(stream))  # type: ignore[misc]
    assert same(state.live(), ("exp1", live))
    assert all(state.credit(key) == tuple(value) for key, value in entries.items())
    assert live.net != 0.0 and live.stakes != Live().stakes
    assert live.champion + live.challenger + live.tie == 8  # every impression rated once


def test_a_tally_counted_before_the_betting_rule_gets_its_evidence_from_the_credits() -> None:
    stream = events(60)
    state = State({})
    for event in stream:
        count(state, event)
    tally = dict(state.get("tally"))
    older = {k: v for k, v in tally["experiment"]["live"].items() if k not in ("net", "stakes")}
    state.set("tally", {**tally, "experiment": {"id": "exp1", "live": older}})
    _, live, _ = recounted(EXPERIMENT, stored(stream))  # type: ignore[misc]
    assert same(state.live(), ("exp1", live)) and live.stakes != Live().stakes


def test_any_prefix_of_the_changelog_credits_each_event_once() -> None:
    """A restore may lose the last writes; the broker then delivers what was not marked seen again."""
    stream = events(25, seed=11)
    table = LoggedTable()
    state = State(table)
    for event in stream:
        count(state, event)
    _, expected, _ = recounted(EXPERIMENT, stored(stream))  # type: ignore[misc]
    for cut in range(len(table.log) + 1):
        restored = State(restore(table.log[:cut]))
        for event in stream:  # redelivered from the committed offset: here, from the start
            count(restored, event)
        assert same(restored.live(), ("exp1", expected)), cut


def test_feedback_on_another_experiment_or_none_credits_nothing() -> None:
    state = State({})
    plain = events(1)[0].model_copy(update={"interleaved": None})
    ended = events(1)[0].model_copy(update={"interleaved": Interleaved(experiment_id="old", team="champion")})
    assert credit(state, plain, EXPERIMENT) is None
    assert credit(state, ended, EXPERIMENT) is None
    assert credit(state, events(1)[0], None) is None
    assert state.live() == (None, Live())


def test_training_waits_until_an_experiment_has_its_minimum_impressions() -> None:
    ready = Counts(total=200, like=100, dislike=100, new_since_training=150)
    assert evaluate(ready, Timing(), Policy(), 0.0).reason == "threshold"
    challenge = EXPERIMENT.model_copy(update={"min_impressions": 200})
    held = evaluate(ready, Timing(), Policy(), 0.0, challenge, impressions=199)
    assert held.reason is None
    assert "comparing v0001 with v0 online: 199 of 500 impressions" in (held.blocked_by or "")
    # A challenge gets its supersede minimum (500 by default) however low its decision floor;
    # past it and still undecided, a candidate trained on more evidence may replace it.
    assert evaluate(ready, Timing(), Policy(), 0.0, challenge, impressions=499).reason is None
    assert evaluate(ready, Timing(), Policy(), 0.0, challenge, impressions=500).reason == "threshold"
    quick = Policy(supersede_impressions=1)
    assert evaluate(ready, Timing(), quick, 0.0, challenge, impressions=200).reason == "threshold"
    watch = challenge.model_copy(update={"kind": "watch", "champion": "v0001", "challenger": "v0"})
    early = evaluate(ready, Timing(), Policy(), 0.0, watch, impressions=199)
    assert early.reason is None
    assert "watching v0001 against v0, the champion it replaced: 199 of 200" in (early.blocked_by or "")
    assert evaluate(ready, Timing(), Policy(), 0.0, watch, impressions=200).reason == "threshold"


def test_once_users_decided_the_policy_waits_for_the_experiment_that_follows() -> None:
    tracker = Tracker()
    tracker.running, tracker.impressions = EXPERIMENT, 5_000
    state = State({})
    assert tracker.toward_minimum(state) == 5_000
    state.set(f"decided:{EXPERIMENT.experiment_id}", {"decision": "promote"})
    assert tracker.toward_minimum(state) == 0


def test_online_the_gate_only_checks_safety_and_offline_it_compares() -> None:
    online, offline = Gate(online=True, safety_margin=0.1), Gate(online=False)
    tie = {"ndcg@10": 0.80}
    below_bm25 = {"ndcg@10": 0.75}
    bm25 = {"ndcg@10": 0.82}
    assert online.review(tie, tie, bm25, prior_auc=0.7)[0] == "challenger"  # a tie: users decide
    assert online.review(below_bm25, tie, bm25, prior_auc=0.7)[0] == "challenger"  # within the margin
    decision, reason = online.review({"ndcg@10": 0.70}, tie, bm25, prior_auc=0.7)
    assert decision == "rejected" and "safety margin 0.1" in reason
    decision, reason = online.review(tie, tie, bm25, prior_auc=0.3)
    assert decision == "rejected" and "flipped" in reason
    assert offline.review(tie, tie, {"ndcg@10": 0.7}, prior_auc=0.7)[0] == "promoted"
    assert offline.review(below_bm25, tie, bm25, prior_auc=0.7)[0] == "rejected"
