"""An online experiment's decision: whether users have decided, and what follows for its kind.

Pure functions, no I/O: the aggregator judges live, the collector and the trainer from the store,
with the same rules and the limits recorded with the experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.online.betting import SequentialTest
from shared.online.credit import Tally
from shared.records import Experiment
from shared.vocab import ExperimentKind, UsersDecision


@dataclass(frozen=True)
class Limits:
    """What one experiment was started with (recorded with it, so a settings change cannot move it)."""

    kind: ExperimentKind
    alpha: float
    min_impressions: int
    max_impressions: int
    max_s: float

    @classmethod
    def of(cls, experiment: Experiment) -> Limits:
        return cls(experiment.kind, experiment.alpha, experiment.min_impressions, experiment.max_impressions,
                   experiment.max_s)


@dataclass(frozen=True)
class Verdict:
    """`decision` when the experiment is over, with the reason in words and the evidence."""

    decision: UsersDecision | None
    reason: str
    evidence: dict[str, Any]


def evidence(tally: Tally, impressions: int, test: SequentialTest) -> dict[str, Any]:
    wins, losses = tally.challenger, tally.champion
    return {"impressions": impressions, "rated": tally.rated, "challenger_wins": wins,
            "champion_wins": losses, "ties": tally.tie, "unrated": max(0, impressions - tally.rated),
            "net_credit": round(tally.net, 4),
            "mean_credit": round(tally.net / impressions, 5) if impressions else 0.0,
            "log_wealth": round(test.log_wealth(tally.stakes), 4), "p_value": test.p_value(tally.stakes),
            "alpha": test.alpha, "queries": tally.query_wins()}


def judge(limits: Limits, tally: Tally, impressions: int, started_at: datetime, now: datetime) -> Verdict:
    """Whether users have decided, and what follows for this kind of experiment.

    A challenge promotes a challenger users prefer and retires one they do not, or that they
    have not preferred by the experiment's limits (a tie keeps the champion). A watch (the
    previous champion as the challenger, after a promotion) rolls back when users prefer the
    previous champion, and keeps the new one otherwise.
    """
    test = SequentialTest(limits.alpha)
    facts = evidence(tally, impressions, test)
    wins, losses = tally.challenger, tally.champion
    score = (f"{wins} impressions won by the challenger, {losses} by the champion, {tally.tie} ties, "
             f"challenger's credit {facts['mean_credit']:+.3f} per impression")
    if impressions < limits.min_impressions:
        return Verdict(None, f"{impressions} of {limits.min_impressions} impressions before any decision",
                       facts)
    if test.significant(tally.stakes):
        p = f"p = {facts['p_value']:.2g} < {limits.alpha}"
        if test.favours_challenger(tally.stakes):
            if limits.kind == "challenge":
                return Verdict("promote", f"users preferred the challenger: {score} ({p})", facts)
            return Verdict("rollback", f"users preferred the previous champion: {score} ({p})", facts)
        if limits.kind == "challenge":
            return Verdict("retire", f"users preferred the champion: {score} ({p})", facts)
        return Verdict("keep", f"users preferred the new champion: {score} ({p})", facts)
    elapsed = (now - started_at).total_seconds()
    if impressions >= limits.max_impressions or elapsed >= limits.max_s:
        limit = (f"{impressions} impressions" if impressions >= limits.max_impressions
                 else f"{elapsed / 3600:.1f} h")
        what = "the champion stays" if limits.kind == "challenge" else "the new champion stays"
        return Verdict("retire" if limits.kind == "challenge" else "keep",
                       f"no significant preference after {limit}: {what} ({score}, "
                       f"p = {facts['p_value']:.2g})", facts)
    return Verdict(None, f"collecting: {score} (p = {facts['p_value']:.2g}, deciding at {limits.alpha})",
                   facts)


def describe(experiment: Experiment, tally: Tally, impressions: int, now: datetime) -> dict[str, Any]:
    """An experiment as the collector (from the store) and the aggregator (live) both show it."""
    verdict = judge(Limits.of(experiment), tally, impressions, experiment.started_at, now)
    return {"experiment_id": experiment.experiment_id, "kind": experiment.kind,
            "champion": experiment.champion, "challenger": experiment.challenger,
            "share": experiment.share, "started_at": experiment.started_at.isoformat(),
            "status": experiment.status, "impressions": impressions,
            "wins": {"champion": tally.champion, "challenger": tally.challenger, "tie": tally.tie},
            "verdict": {"decision": verdict.decision, "reason": verdict.reason},
            "evidence": verdict.evidence}
