"""The training policy, the counting rules and the table's write order, without a broker."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from services.aggregator.app import StuckWatch
from services.aggregator.policy import Policy, Timing, decide, evaluate
from services.aggregator.table import GROUP_SIZE, State
from shared.feedback_counts import (
    apply_feedback,
    apply_fresh,
    apply_to_versions,
    count_feedback,
    describe,
    last_training,
)
from shared.records import Counts, Feedback, TrainingRun
from shared.settings import Settings

NOW = 1_800_000_000.0
DAY = 86400.0
POLICY = Policy(min_total=10, min_new=100, min_per_class=5, max_imbalance=0.8, cooldown_s=3600,
                schedule_s=60 * DAY, pending_timeout_s=7200)


def counts(like: int, dislike: int, new: int | None = None) -> Counts:
    new = like + dislike if new is None else new
    return Counts(total=like + dislike, like=like, dislike=dislike, new_since_training=new)


def test_settings_fill_every_knob_and_accept_durations() -> None:
    policy = Policy.from_settings(Settings(
        train_min_feedback=20, train_min_new_feedback=50, train_min_per_class=3, train_max_imbalance=0.9,
        train_cooldown_s="12h", train_schedule_s="60d", train_pending_timeout_s="90m"))
    assert policy == Policy(min_total=20, min_new=50, min_per_class=3, max_imbalance=0.9,
                            cooldown_s=12 * 3600, schedule_s=60 * DAY, pending_timeout_s=5400)
    assert Policy.from_settings(Settings()) == Policy()
    assert (Policy().min_total, Policy().min_new) == (10, 100)
    with pytest.raises(ValueError, match="not a duration"):
        Settings(train_schedule_s="two months")


def test_fires_exactly_at_the_threshold() -> None:
    timing = Timing(last_training_at=NOW - DAY)
    assert decide(counts(60, 39), timing, POLICY, NOW) is None
    assert decide(counts(60, 40), timing, POLICY, NOW) == "threshold"
    assert decide(counts(60, 41), timing, POLICY, NOW) == "threshold"
    below = evaluate(counts(60, 39), timing, POLICY, NOW)
    assert below.blocked_by == "99 new feedback since the last training, fewer than 100"


@pytest.mark.parametrize(("like", "dislike", "new", "blocked"), [
    (5, 4, 9, "9 feedback, fewer than the minimum 10"),
    (150, 4, 154, "150 likes and 4 dislikes: each label needs 5"),
    (4, 150, 154, "4 likes and 150 dislikes: each label needs 5"),
    (90, 10, 100, "one label is 90% of the feedback, above the maximum 80%"),
])
def test_each_condition_holds_it_back(like: int, dislike: int, new: int, blocked: str) -> None:
    verdict = evaluate(counts(like, dislike, new), Timing(), POLICY, NOW)
    assert (verdict.reason, verdict.blocked_by) == (None, blocked)


def test_balance_limit_is_inclusive() -> None:
    assert decide(counts(80, 20), Timing(), POLICY, NOW) == "threshold"  # 80% is allowed
    assert decide(counts(81, 20), Timing(), POLICY, NOW) is None


def test_cooldown_holds_it_back_until_it_ends() -> None:
    enough = counts(100, 100)
    timing = Timing(last_request_at=NOW - 3599)
    verdict = evaluate(enough, timing, POLICY, NOW)
    assert verdict.reason is None and verdict.blocked_by == "cooldown: 1s left"
    assert decide(enough, timing, POLICY, NOW + 1) == "threshold"
    assert decide(enough, Timing(last_request_at=NOW - 3599), Policy(cooldown_s=0), NOW) == "threshold"


def test_a_pending_request_waits_for_the_trainer_or_its_timeout() -> None:
    enough = counts(100, 100)
    pending = Timing(last_request_at=NOW - 7000, pending_since=NOW - 7000, pending_request="r1")
    waiting = evaluate(enough, pending, POLICY, NOW)
    assert waiting.blocked_by == "a training request is waiting for the trainer"
    assert decide(enough, pending, POLICY, NOW + 200) == "threshold"  # timed out: ask again


def test_a_skipped_or_failed_run_is_retried_later() -> None:
    enough = counts(100, 100)
    timing = Timing(last_request_at=NOW - 4000, retry_at=NOW + 60)
    assert evaluate(enough, timing, POLICY, NOW).blocked_by == (
        "the last run was skipped or failed: asking again in 60s")
    assert decide(enough, timing, POLICY, NOW + 60) == "threshold"


def test_schedule_fires_without_the_threshold_only_when_due_and_something_is_new() -> None:
    few = counts(20, 20, new=3)
    trained = Timing(last_training_at=NOW - 60 * DAY + 1)
    assert decide(few, trained, POLICY, NOW) is None
    assert decide(few, trained, POLICY, NOW + 1) == "schedule"
    assert decide(counts(20, 20, new=0), trained, POLICY, NOW + DAY) is None
    # Never trained: the schedule counts from the first feedback.
    assert decide(few, Timing(counting_since=NOW - 61 * DAY), POLICY, NOW) == "schedule"
    assert decide(few, Timing(), POLICY, NOW) is None
    assert decide(few, trained, Policy(schedule_s=0), NOW + 365 * DAY) is None
    # The schedule still respects the data conditions and the cooldown.
    assert decide(counts(3, 3, new=3), trained, POLICY, NOW + DAY) is None
    assert decide(few, Timing(last_training_at=NOW - 61 * DAY, last_request_at=NOW - 10), POLICY, NOW) is None


def test_counts_move_with_label_changes_in_any_order() -> None:
    events = [("like", None), ("dislike", None), ("dislike", "like"), ("like", None), ("like", "dislike")]
    results = set()
    for order in itertools.permutations(events):
        c = Counts()
        for label, previous in order:
            c = apply_feedback(c, label, previous)
        results.add((c.total, c.like, c.dislike))
    assert results == {(3, 2, 1)}


def test_versions_count_the_label_each_version_ranked() -> None:
    versions = apply_to_versions({}, "v0", "like", None)
    versions = apply_to_versions(versions, "v1", "dislike", None)
    versions = apply_to_versions(versions, "v0", "dislike", "like")
    assert versions == {"v0": {"like": 0, "dislike": 1}, "v1": {"like": 0, "dislike": 1}}


def test_since_training_follows_the_latest_label_whatever_arrives_first() -> None:
    created, changed = ("like", 10.0), ("dislike", 20.0)
    for first, second in ((created, changed), (changed, created)):
        c, entry = apply_fresh(Counts(), None, *first)
        c, newer = apply_fresh(c, entry, *second)
        entry = newer or entry
        assert (c.new_since_training, c.new_like, c.new_dislike, entry) == (1, 0, 1, ("dislike", 20.0))


def test_a_change_to_trained_feedback_is_new_again() -> None:
    c, entry = apply_fresh(counts(5, 5, new=0), None, "dislike", 30.0)
    assert (c.new_since_training, c.new_dislike, entry) == (1, 1, ("dislike", 30.0))


def feedback(n: int, label: str, version: str, updated: datetime) -> Feedback:
    return Feedback(feedback_id=f"fb-{n}", inference_id=f"inf-{n}", resource_id="r", label=label, rank=1,
                    model_version=version, created_at=updated, updated_at=updated)


def test_store_view_matches_the_event_view() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    runs = [TrainingRun(run_id="a", status="promoted", started_at=t0 + timedelta(hours=1),
                        finished_at=t0 + timedelta(hours=2)),
            TrainingRun(run_id="b", status="skipped", started_at=t0 + timedelta(hours=3),
                        finished_at=t0 + timedelta(hours=3)),
            TrainingRun(run_id="c", status="running", started_at=t0 + timedelta(hours=4))]
    since, finished = last_training(runs)
    assert (since, finished) == (t0 + timedelta(hours=1), t0 + timedelta(hours=2))
    records = [feedback(0, "like", "v0", t0), feedback(1, "dislike", "v0", t0),
               feedback(2, "like", "v1", t0 + timedelta(hours=5)),
               feedback(3, "dislike", "v1", t0 + timedelta(hours=6))]
    c, versions, fresh = count_feedback(records, since)
    assert (c.total, c.like, c.dislike, c.new_since_training, c.new_like, c.new_dislike) == (4, 2, 2, 2, 1, 1)
    assert sorted(fresh) == ["fb-2", "fb-3"]
    view = describe(c, versions, finished)
    assert view == {
        "total": 4, "like": 2, "dislike": 2, "like_ratio": 0.5,
        "by_model_version": {v: {"total": 2, "like": 1, "dislike": 1} for v in ("v0", "v1")},
        "since_last_training": {"total": 2, "like": 1, "dislike": 1},
        "last_training_at": finished.isoformat(),
    }
    assert last_training([]) == (None, None)
    assert count_feedback(records, None)[0].new_since_training == 4
    assert describe(Counts(), {}, None)["like_ratio"] is None


class LoggedTable(dict):
    """A dict that keeps its writes in order, like a table's changelog."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, object]] = []

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        self.log.append((key, value))

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.log.append((key, None))


def restore(log: list[tuple[str, object]]) -> dict:
    table: dict = {}
    for key, value in log:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def count_event(state: State, n: int) -> None:
    counts, versions, _ = state.tally()
    counts = apply_feedback(counts, "like", None)
    counts, fresh = apply_fresh(counts, state.fresh(f"fb-{n}"), "like", float(n))
    state.record(counts, versions, f"ev-{n}", (f"fb-{n}", fresh) if fresh else None, now=float(n))


def test_any_prefix_of_the_changelog_counts_each_event_once() -> None:
    """A restore may lose the last writes: an event is then either fully counted or not at all."""
    table = LoggedTable()
    state = State(table)
    for n in range(1, 5):
        count_event(state, n)
    for cut in range(len(table.log) + 1):
        restored = State(restore(table.log[:cut]))
        counted = restored.tally()[0].total
        assert [restored.seen(f"ev-{n}") for n in range(1, 5)] == [n <= counted for n in range(1, 5)], cut
        # Counting goes on: whatever was lost is counted again, once, and the entries come back.
        for n in range(counted + 1, 6):
            count_event(restored, n)
        assert restored.tally()[0].total == 5
        assert all(restored.seen(f"ev-{n}") for n in range(1, 6))
        assert all(restored.fresh(f"fb-{n}") == ("like", float(n)) for n in range(1, 5))


def test_any_prefix_of_the_changelog_counts_each_event_of_a_batch_once() -> None:
    """Counts committed a batch at a time (`State.batch`): after any restore and a redelivery of
    everything, each event is counted once and its entries are back."""
    table = LoggedTable()
    state = State(table)
    for batch in ([1, 2, 3], [4, 5], [6]):
        with state.batch():
            for n in batch:
                count_event(state, n)
    # One tally per batch, and one group of ids and one of fresh entries: not a key per event.
    assert len(table.log) == 9 and len([key for key, _ in table.log if key == "tally"]) == 3
    for cut in range(len(table.log) + 1):
        restored = State(restore(table.log[:cut]))
        with restored.batch():
            for n in range(1, 7):
                if not restored.seen(f"ev-{n}"):
                    count_event(restored, n)
        assert restored.tally()[0].total == 6, cut
        assert all(restored.seen(f"ev-{n}") for n in range(1, 7))
        assert all(restored.fresh(f"fb-{n}") == ("like", float(n)) for n in range(1, 7))
        # Read back from the table alone (a restart), after one more commit: nothing is lost.
        count_event(restored, 7)
        reread = State(dict(restored.table))
        assert reread.tally()[0].total == 7 and all(reread.seen(f"ev-{n}") for n in range(1, 8)), cut
        assert all(reread.fresh(f"fb-{n}") == ("like", float(n)) for n in range(1, 8))


def test_a_rebuild_replaces_the_fresh_entries_and_keeps_ids_seen() -> None:
    state = State({})
    count_event(state, 1)
    count_event(state, 2)
    state.replace(counts(3, 1, new=1), {"v0": {"like": 3, "dislike": 1}}, {"fb-9": ("dislike", 9.0)},
                  ["ev-7", "ev-8"], now=10.0)
    assert state.tally() == (counts(3, 1, new=1), {"v0": {"like": 3, "dislike": 1}}, None)
    assert [state.fresh(f"fb-{n}") for n in (1, 2, 9)] == [None, None, ("dislike", 9.0)]
    assert all(state.seen(e) for e in ("ev-1", "ev-2", "ev-7", "ev-8"))
    assert state.seen_entries() == 4


def test_any_prefix_of_a_rebuild_is_the_state_before_or_after_it() -> None:
    """A rebuild's groups count only once its tally is written: a restore cut before it keeps the
    old counts, ids and fresh entries, and none of the rebuild's (they would hide lost counts)."""
    table = LoggedTable()
    state = State(table)
    count_event(state, 1)
    count_event(state, 2)
    start = len(table.log)
    many = [f"ev-{n}" for n in range(100, 100 + 2 * GROUP_SIZE + 1)]  # three groups of ids
    state.replace(counts(3, 1, new=1), {}, {"fb-9": ("dislike", 9.0)}, many, now=10.0)
    for cut in range(start, len(table.log) + 1):
        restored = State(restore(table.log[:cut]))
        rebuilt = restored.tally()[0].total == 4
        assert rebuilt == (cut > [key for key, _ in table.log].index("tally", start)), cut
        seen = [restored.seen(e) for e in ("ev-1", "ev-2", many[0], many[-1])]
        assert seen == [True, True, rebuilt, rebuilt], cut
        assert restored.fresh("fb-9") == (("dislike", 9.0) if rebuilt else None)
        assert restored.fresh("fb-1") == (None if rebuilt else ("like", 1.0))
        assert restored.seen_entries() == (2 + len(many) if rebuilt else 2)


def test_seen_ids_expire_after_the_window() -> None:
    state = State({})
    for n in range(1, 6):
        state.mark_seen(f"ev-{n}", now=float(n))
    assert state.seen_entries() == 5
    assert state.expire_seen(older_than=3.0) == 2
    assert [state.seen(f"ev-{n}") for n in range(1, 6)] == [False, False, True, True, True]
    assert state.seen_entries() == 3


def test_new_opens_ask_for_training_as_new_ratings_do() -> None:
    policy = Policy(min_total=10, min_new=100, min_new_interactions=500, min_per_class=5, max_imbalance=0.8,
                    cooldown_s=0, schedule_s=0, pending_timeout_s=7200)
    timing = Timing(last_training_at=NOW - DAY)
    few_ratings = Counts(total=3, like=2, dislike=1, new_since_training=3)
    opened = few_ratings.model_copy(update={"opens": 700, "satisfied": 200, "quick": 150,
                                            "new_interactions": 499})
    assert evaluate(opened, timing, policy, NOW).blocked_by == (
        "3 new feedback and 499 new opens since the last training, fewer than 100 and 500")
    assert decide(opened.model_copy(update={"new_interactions": 500}), timing, policy, NOW) == "threshold"
    lopsided = opened.model_copy(update={"quick": 2, "new_interactions": 600})
    assert evaluate(lopsided, timing, policy, NOW).blocked_by == (
        "202 likes or satisfied opens and 3 dislikes or quick returns: each side needs 5")


def test_opens_are_counted_by_their_latest_outcome_once_each() -> None:
    from shared.feedback_counts import apply_fresh_interaction, apply_interaction

    c = apply_interaction(Counts(), True, None, None)  # opened
    c = apply_interaction(c, False, 3.0, None)  # came back at once
    c = apply_interaction(c, False, 45.0, 3.0)  # a longer stay reported later
    assert (c.opens, c.satisfied, c.quick) == (1, 1, 0)
    c, entry = apply_fresh_interaction(c, None, 10.0)
    c, again = apply_fresh_interaction(c, entry, 20.0)
    assert c.new_interactions == 1 and again == ("open", 20.0)
    assert apply_fresh_interaction(c, again, 15.0) == (c, None)  # an older event changes nothing


def test_a_worker_is_stuck_only_when_it_stays_rebalancing_with_the_broker_up() -> None:
    """A rebalance of seconds, a long table restore or a broker still away is not stuck; 45 s of
    rebalancing with the broker answering is, and any break starts the count again."""
    watch = StuckWatch(45.0)
    assert not watch.stuck(True, False, True, 0.0)
    assert not watch.stuck(True, False, True, 44.0)
    assert watch.stuck(True, False, True, 45.0)
    assert not watch.stuck(False, False, True, 46.0)  # settled: the count starts again
    assert not watch.stuck(True, False, True, 50.0) and not watch.stuck(True, False, True, 94.0)
    assert not watch.stuck(True, True, True, 200.0)  # restoring its table
    assert not watch.stuck(True, False, False, 400.0)  # the broker is away: nothing to restart for
    assert not StuckWatch(0.0).stuck(True, False, True, 1e9)
