"""The training policy: when to ask for training, and what holds it back. Pure functions,
unit-tested without a broker; the counts it reads follow `shared.feedback_counts`."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import Counts
from shared.settings import Settings, from_settings, setting
from shared.store import Experiment


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
