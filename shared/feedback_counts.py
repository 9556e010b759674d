"""The counting rules of feedback and interactions: pure functions, unit-tested without a broker.

Both the aggregator (live, from events) and the collector (on demand, from the store) describe
them with these functions, so that their statistics can be compared key for key.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from shared.evidence.outcomes import open_outcome
from shared.records import Counts, Feedback, Interaction, TrainingRun

LABELS = ("like", "dislike")
CountsByVersion = dict[str, dict[str, int]]
"""Feedback per model version that ranked the results: {"v0": {"like": 3, "dislike": 1}}."""


def apply_feedback(counts: Counts, label: str, previous_label: str | None) -> Counts:
    """A new feedback adds one; a changed label moves one from the old label to the new.

    Plain sums: events may be applied in any order (a change counted before its creation,
    when the broker lost the creation and the store supplied it later, ends the same).
    """
    c = counts.model_copy()
    setattr(c, label, getattr(c, label) + 1)
    if previous_label is None:
        c.total += 1
    else:
        setattr(c, previous_label, getattr(c, previous_label) - 1)
    return c


Fresh = tuple[str, float]
"""A feedback given or changed since the last training: its latest label, and when it was given."""


def apply_fresh(counts: Counts, fresh: Fresh | None, label: str, at: float) -> tuple[Counts, Fresh | None]:
    """The since-training counters follow each feedback's latest label, whatever the arrival order.

    Returns the counts and the feedback's new `Fresh` entry (None: nothing changes, the event is
    older than what is known).
    """
    c = counts.model_copy()
    if fresh is None:
        c.new_since_training += 1
    elif at <= fresh[1]:
        return c, None
    else:
        setattr(c, f"new_{fresh[0]}", getattr(c, f"new_{fresh[0]}") - 1)
    setattr(c, f"new_{label}", getattr(c, f"new_{label}") + 1)
    return c, (label, at)


def apply_interaction(counts: Counts, opened: bool, dwell_s: float | None,
                      previous_dwell_s: float | None) -> Counts:
    """An open adds one; a dwell report moves the open from its last outcome to its new one (only
    satisfied opens and quick returns are counted by outcome). Plain sums, in any order."""
    c = counts.model_copy()
    if opened:
        c.opens += 1
    for dwell, step in ((previous_dwell_s, -1), (dwell_s, 1)):
        if step < 0 and opened:
            continue
        outcome = open_outcome(dwell)
        if outcome in ("satisfied", "quick"):
            setattr(c, outcome, getattr(c, outcome) + step)
    return c


def apply_fresh_interaction(counts: Counts, fresh: Fresh | None, at: float) -> tuple[Counts, Fresh | None]:
    """An interaction opened or reported since the last training counts once toward new evidence;
    returns the counts and its new `Fresh` entry (None: nothing changes)."""
    c = counts.model_copy()
    if fresh is None:
        c.new_interactions += 1
    elif at <= fresh[1]:
        return c, None
    return c, ("open", at)


def apply_to_versions(versions: CountsByVersion, version: str, label: str,
                      previous_label: str | None) -> CountsByVersion:
    """Per model version: the version that ranked a result never changes, only its label."""
    counts = {**{name: 0 for name in LABELS}, **versions.get(version, {})}
    counts[label] += 1
    if previous_label is not None:
        counts[previous_label] -= 1
    return {**versions, version: counts}


def last_training(runs: Iterable[TrainingRun]) -> tuple[datetime | None, datetime | None]:
    """The latest finished training: when it started reading feedback, and when it finished.

    Feedback given or changed after the start is "new since the last training".
    """
    done = [r for r in runs if r.status in ("promoted", "challenger", "rejected") and r.finished_at]
    if not done:
        return None, None
    latest = max(done, key=lambda r: r.finished_at or r.started_at)
    return latest.started_at, latest.finished_at


def count_feedback(feedback: Iterable[Feedback], since: datetime | None,
                   interactions: Iterable[Interaction] = ()
                   ) -> tuple[Counts, CountsByVersion, dict[str, Fresh]]:
    """What the events would have counted, from the records themselves (the store's view)."""
    counts = Counts()
    versions: CountsByVersion = {}
    fresh: dict[str, Fresh] = {}
    for f in feedback:
        counts = apply_feedback(counts, f.label, None)
        if since is None or f.updated_at > since:
            counts, fresh[f.feedback_id] = apply_fresh(counts, None, f.label, f.updated_at.timestamp())
        versions = apply_to_versions(versions, f.model_version, f.label, None)
    for i in interactions:
        counts = apply_interaction(counts, True, i.dwell_s, None)
        if since is None or i.updated_at > since:
            counts, fresh[i.interaction_id] = apply_fresh_interaction(counts, None, i.updated_at.timestamp())
    return counts, versions, fresh


def describe(counts: Counts, versions: CountsByVersion,
             last_training_at: datetime | None) -> dict[str, Any]:
    """The statistics both the collector and the aggregator show, in one shape."""
    return {
        "total": counts.total,
        "like": counts.like,
        "dislike": counts.dislike,
        "like_ratio": round(counts.like / counts.total, 6) if counts.total else None,
        "by_model_version": {
            v: {"total": sum(c.get(name, 0) for name in LABELS), **{name: c.get(name, 0) for name in LABELS}}
            for v, c in sorted(versions.items())
        },
        "since_last_training": {"total": counts.new_since_training, "like": counts.new_like,
                                "dislike": counts.new_dislike},
        "last_training_at": last_training_at.isoformat() if last_training_at else None,
    }


def describe_interactions(counts: Counts) -> dict[str, int]:
    """The interactions' statistics both the collector and the aggregator show (`interactions`)."""
    return {"opens": counts.opens, "satisfied": counts.satisfied, "quick": counts.quick,
            "since_last_training": counts.new_interactions}
