"""The training policy and the counting rules: pure functions, unit-tested without a broker.

Both the aggregator (live, from events) and the collector (on demand, from the store) describe
feedback with these functions, so that their statistics can be compared key for key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.events import Counts
from shared.settings import Settings, from_settings, setting
from shared.store import Experiment, Feedback, TrainingRun

LABELS = ("like", "dislike")
Versions = dict[str, dict[str, int]]
"""Feedback per model version that ranked the results: {"v0": {"like": 3, "dislike": 1}}."""


@dataclass(frozen=True)
class Policy:
    """When to ask for training; every field is an `EDURANKER_TRAIN_*` setting, with its default."""

    min_total: int = setting("train_min_feedback")
    min_new: int = setting("train_min_new_feedback")
    min_per_class: int = setting("train_min_per_class")
    max_imbalance: float = setting("train_max_imbalance")
    cooldown_s: float = setting("train_cooldown_s")
    schedule_s: float = setting("train_schedule_s")
    pending_timeout_s: float = setting("train_pending_timeout_s")

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        return from_settings(cls, s)


@dataclass(frozen=True)
class Timing:
    """When things happened (epoch seconds; 0 = never)."""

    last_request_at: float = 0.0
    pending_since: float = 0.0
    pending_request: str = ""
    last_training_at: float = 0.0
    counting_since: float = 0.0
    retry_at: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """`reason` to request training now, or what holds it back (`blocked_by`, in words)."""

    reason: str | None = None
    blocked_by: str | None = None


def evaluate(counts: Counts, timing: Timing, policy: Policy, now: float,
             experiment: Experiment | None = None, impressions: int = 0) -> Verdict:
    """Checks the conditions in a fixed order; the first that fails is the one reported.

    A running experiment gets its minimum of `impressions` before the next training: the new
    candidate would end it (`superseded`) before users could decide anything. Past the minimum,
    an experiment users have not decided yet gives way to a candidate trained on more feedback
    (an undecided challenger is close to the champion; the fresher one carries what users
    taught since), and a watch has had its chance to catch a clear regression.
    """
    if experiment is not None and impressions < experiment.min_impressions:
        what = (f"users are comparing {experiment.challenger} with {experiment.champion} online"
                if experiment.kind == "challenge" else
                f"watching {experiment.champion} against {experiment.challenger}, the champion it replaced")
        return Verdict(blocked_by=f"{what}: {impressions} of {experiment.min_impressions} impressions "
                                  "before the next training")
    if timing.pending_since and now - timing.pending_since < policy.pending_timeout_s:
        return Verdict(blocked_by="a training request is waiting for the trainer")
    if timing.retry_at and now < timing.retry_at:
        return Verdict(blocked_by=f"the last run was skipped or failed: asking again in "
                                  f"{timing.retry_at - now:.0f}s")
    if timing.last_request_at and now - timing.last_request_at < policy.cooldown_s:
        left = policy.cooldown_s - (now - timing.last_request_at)
        return Verdict(blocked_by=f"cooldown: {left:.0f}s left")
    if counts.total < policy.min_total:
        return Verdict(blocked_by=f"{counts.total} feedback, fewer than the minimum {policy.min_total}")
    if min(counts.like, counts.dislike) < policy.min_per_class:
        return Verdict(blocked_by=f"{counts.like} likes and {counts.dislike} dislikes: "
                                  f"each label needs {policy.min_per_class}")
    majority = max(counts.like, counts.dislike) / counts.total
    if majority > policy.max_imbalance:
        return Verdict(blocked_by=f"one label is {majority:.0%} of the feedback, "
                                  f"above the maximum {policy.max_imbalance:.0%}")
    if counts.new_since_training >= policy.min_new:
        return Verdict(reason="threshold")
    reference = timing.last_training_at or timing.last_request_at or timing.counting_since
    due = bool(policy.schedule_s and reference and now - reference >= policy.schedule_s)
    if due and counts.new_since_training > 0:
        return Verdict(reason="schedule")
    return Verdict(blocked_by=f"{counts.new_since_training} new feedback since the last training, "
                              f"fewer than {policy.min_new}")


def decide(counts: Counts, timing: Timing, policy: Policy, now: float,
           experiment: Experiment | None = None, impressions: int = 0) -> str | None:
    """The reason to request training now ("threshold" or "schedule"), or None."""
    return evaluate(counts, timing, policy, now, experiment, impressions).reason


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


def apply_to_versions(versions: Versions, version: str, label: str, previous_label: str | None) -> Versions:
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


def count_feedback(feedback: Iterable[Feedback], since: datetime | None
                   ) -> tuple[Counts, Versions, dict[str, Fresh]]:
    """What the events would have counted, from the records themselves (the store's view)."""
    counts = Counts()
    versions: Versions = {}
    fresh: dict[str, Fresh] = {}
    for f in feedback:
        counts = apply_feedback(counts, f.label, None)
        if since is None or f.updated_at > since:
            counts, fresh[f.feedback_id] = apply_fresh(counts, None, f.label, f.updated_at.timestamp())
        versions = apply_to_versions(versions, f.model_version, f.label, None)
    return counts, versions, fresh


def describe(counts: Counts, versions: Versions, last_training_at: datetime | None) -> dict[str, Any]:
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
