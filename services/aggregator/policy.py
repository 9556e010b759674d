"""The training policy: when to ask for training, and what holds it back. Pure functions,
unit-tested without a broker; the counts it reads follow `shared.feedback_counts`."""

from __future__ import annotations

from dataclasses import dataclass

from shared.records import Counts, Experiment
from shared.settings import Settings, from_settings, setting


@dataclass(frozen=True)
class Policy:
    """When to ask for training; every field is an `EDURANKER_TRAIN_*` setting, with its default."""

    min_total: int = setting("train_min_feedback")
    min_new: int = setting("train_min_new_feedback")
    min_new_interactions: int = setting("train_min_new_interactions")
    supersede_impressions: int = setting("experiment_supersede_impressions")
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
    candidate would end it (`superseded`) before users could decide anything. A challenge gets
    at least `supersede_impressions` (opens give each search less evidence than a rating, and
    come on every search: without it a challenger was superseded by the next run before users
    could tell it apart); past that, a challenge users have not decided gives way to a candidate
    trained on more evidence (an undecided challenger is close to the champion; the fresher one
    carries what users taught since). A watch has its chance to catch a clear regression at its
    minimum.
    """
    needed = 0
    if experiment is not None:
        needed = experiment.min_impressions
        if experiment.kind == "challenge":
            needed = max(needed, policy.supersede_impressions)
    if experiment is not None and impressions < needed:
        what = (f"users are comparing {experiment.challenger} with {experiment.champion} online"
                if experiment.kind == "challenge" else
                f"watching {experiment.champion} against {experiment.challenger}, the champion it replaced")
        return Verdict(blocked_by=f"{what}: {impressions} of {needed} impressions before the next training")
    if timing.pending_since and now - timing.pending_since < policy.pending_timeout_s:
        return Verdict(blocked_by="a training request is waiting for the trainer")
    if timing.retry_at and now < timing.retry_at:
        return Verdict(blocked_by=f"the last run was skipped or failed: asking again in "
                                  f"{timing.retry_at - now:.0f}s")
    if timing.last_request_at and now - timing.last_request_at < policy.cooldown_s:
        left = policy.cooldown_s - (now - timing.last_request_at)
        return Verdict(blocked_by=f"cooldown: {left:.0f}s left")
    # Evidence: ratings and opens alike (shared/evidence); for and against a result, the likes and
    # satisfied opens against the dislikes and quick returns. Said in ratings' words where there
    # are no opens (the original guide's feedback alone).
    opens = counts.opens > 0
    evidence = counts.total + counts.opens
    if evidence < policy.min_total:
        what = "feedback and opens" if opens else "feedback"
        return Verdict(blocked_by=f"{evidence} {what}, fewer than the minimum {policy.min_total}")
    if min(counts.positive, counts.negative) < policy.min_per_class:
        sides = (f"{counts.positive} likes or satisfied opens and {counts.negative} dislikes or quick "
                 "returns: each side" if opens else f"{counts.like} likes and {counts.dislike} dislikes: "
                 "each label")
        return Verdict(blocked_by=f"{sides} needs {policy.min_per_class}")
    majority = max(counts.positive, counts.negative) / max(1, counts.positive + counts.negative)
    if majority > policy.max_imbalance:
        what = "side is" if opens else "label is"
        return Verdict(blocked_by=f"one {what} {majority:.0%} of the {'evidence' if opens else 'feedback'}, "
                                  f"above the maximum {policy.max_imbalance:.0%}")
    if counts.new_since_training >= policy.min_new or counts.new_interactions >= policy.min_new_interactions:
        return Verdict(reason="threshold")
    reference = timing.last_training_at or timing.last_request_at or timing.counting_since
    due = bool(policy.schedule_s and reference and now - reference >= policy.schedule_s)
    if due and (counts.new_since_training > 0 or counts.new_interactions > 0):
        return Verdict(reason="schedule")
    if not opens:
        return Verdict(blocked_by=f"{counts.new_since_training} new feedback since the last training, "
                                  f"fewer than {policy.min_new}")
    return Verdict(blocked_by=f"{counts.new_since_training} new feedback and {counts.new_interactions} new "
                              f"opens since the last training, fewer than {policy.min_new} and "
                              f"{policy.min_new_interactions}")


def decide(counts: Counts, timing: Timing, policy: Policy, now: float,
           experiment: Experiment | None = None, impressions: int = 0) -> str | None:
    """The reason to request training now ("threshold" or "schedule"), or None."""
    return evaluate(counts, timing, policy, now, experiment, impressions).reason
