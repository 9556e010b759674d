"""The training policy and the counting rules: pure functions, unit-tested without a broker."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import Counts
from shared.settings import Settings


@dataclass(frozen=True)
class Policy:
    min_total: int = 10
    min_new: int = 100
    min_per_class: int = 1
    max_imbalance: float = 0.95
    cooldown_s: float = 0.0
    schedule_s: float = 0.0
    pending_timeout_s: float = 3600.0

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        return cls(min_total=s.train_min_feedback, min_new=s.train_min_new_feedback,
                   min_per_class=s.train_min_per_class, max_imbalance=s.train_max_imbalance,
                   cooldown_s=s.train_cooldown_s, schedule_s=s.train_schedule_s,
                   pending_timeout_s=s.train_pending_timeout_s)


@dataclass(frozen=True)
class Timing:
    """When things happened (epoch seconds; 0 = never)."""

    last_request_at: float = 0.0
    pending_since: float = 0.0
    last_training_at: float = 0.0


def apply_feedback(counts: Counts, label: str, previous_label: str | None) -> Counts:
    """A new feedback adds one; a changed label moves one from the old label to the new."""
    c = counts.model_copy()
    setattr(c, label, getattr(c, label) + 1)
    new_field = f"new_{label}"
    setattr(c, new_field, getattr(c, new_field) + 1)
    if previous_label is None:
        c.total += 1
        c.new_since_training += 1
    else:
        setattr(c, previous_label, max(0, getattr(c, previous_label) - 1))
        old_new = f"new_{previous_label}"
        if getattr(c, old_new) > 0:
            setattr(c, old_new, getattr(c, old_new) - 1)
        else:
            c.new_since_training += 1
    return c


def after_training(counts: Counts, snapshot: Counts) -> Counts:
    """Feedback that arrived while the trainer worked still counts toward the next run."""
    c = counts.model_copy()
    c.new_since_training = max(0, c.new_since_training - snapshot.new_since_training)
    c.new_like = max(0, c.new_like - snapshot.new_like)
    c.new_dislike = max(0, c.new_dislike - snapshot.new_dislike)
    return c


def decide(counts: Counts, timing: Timing, policy: Policy, now: float) -> str | None:
    """The reason to request training now ("threshold" or "schedule"), or None."""
    if timing.pending_since and now - timing.pending_since < policy.pending_timeout_s:
        return None
    if timing.last_request_at and now - timing.last_request_at < policy.cooldown_s:
        return None
    if counts.total < policy.min_total:
        return None
    if min(counts.like, counts.dislike) < policy.min_per_class:
        return None
    if max(counts.like, counts.dislike) / counts.total > policy.max_imbalance:
        return None
    if counts.new_since_training >= policy.min_new and min(counts.new_like, counts.new_dislike) >= 1:
        return "threshold"
    reference = timing.last_training_at or timing.last_request_at
    if (policy.schedule_s and reference and counts.new_since_training > 0
            and now - reference >= policy.schedule_s):
        return "schedule"
    return None
