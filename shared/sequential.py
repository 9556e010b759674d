"""The decision rule of an online experiment: a mixture sequential probability ratio test (mSPRT).

Among impressions with a winner, the challenger wins W and the champion L of n = W + L; under
"users have no preference" (H0) each is the challenger's with probability 1/2. The evidence
against H0 is the likelihood ratio of a Beta(a, a) mixture over that probability against 1/2:

    Λ = B(W + a, L + a) / B(a, a) · 2^n

Under H0, Λ is a non-negative martingale with mean 1, so by Ville's inequality the chance that
it *ever* reaches 1/α is at most α (Robbins 1970; Johari, Pekelis and Walsh 2017, "always valid
p-values"). The test may therefore be checked after every feedback and stopped at the first
crossing without inflating its error, which a fixed-sample test peeked at daily would. Ties
carry no information about direction and are left out, as in a sign test. `1/Λ` is the
always-valid p-value.

The mixture's spread is the preference the test is tuned for: Beta(a, a) has standard
deviation `effect` around 1/2 when a = (1 / (4 effect²) - 1) / 2. Interleaving comparisons of
rankers 0.02 nDCG@10 apart give win rates near 0.55, hence the default effect 0.07 (a = 25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from scipy.special import betaln

from shared.interleaving import Tally
from shared.store.base import Experiment

Decision = Literal["promote", "retire", "rollback", "keep"]


@dataclass(frozen=True)
class SequentialTest:
    alpha: float = 0.05
    effect: float = 0.07

    @property
    def prior(self) -> float:
        """The Beta mixture's parameter a for the tuned effect (at least 1/2, the Jeffreys prior)."""
        return max((1.0 / (4.0 * self.effect**2) - 1.0) / 2.0, 0.5)

    def log_likelihood_ratio(self, wins: int, losses: int) -> float:
        a = self.prior
        return float(betaln(wins + a, losses + a) - betaln(a, a) + (wins + losses) * math.log(2.0))

    def p_value(self, wins: int, losses: int) -> float:
        return min(1.0, math.exp(-self.log_likelihood_ratio(wins, losses)))

    def significant(self, wins: int, losses: int) -> bool:
        return self.log_likelihood_ratio(wins, losses) >= math.log(1.0 / self.alpha)


@dataclass(frozen=True)
class Limits:
    """What one experiment was started with (recorded with it, so a settings change cannot move it)."""

    kind: Literal["challenge", "watch"]
    alpha: float
    effect: float
    min_impressions: int
    max_impressions: int
    max_s: float

    @classmethod
    def of(cls, experiment: Experiment) -> Limits:
        return cls(experiment.kind, experiment.alpha, experiment.effect, experiment.min_impressions,
                   experiment.max_impressions, experiment.max_s)


@dataclass(frozen=True)
class Verdict:
    """`decision` when the experiment is over, with the reason in words and the evidence."""

    decision: Decision | None
    reason: str
    evidence: dict[str, Any]


def evidence(tally: Tally, impressions: int, test: SequentialTest) -> dict[str, Any]:
    wins, losses = tally.challenger, tally.champion
    return {"impressions": impressions, "rated": tally.rated, "challenger_wins": wins,
            "champion_wins": losses, "ties": tally.tie, "unrated": max(0, impressions - tally.rated),
            "log_likelihood_ratio": round(test.log_likelihood_ratio(wins, losses), 4),
            "p_value": test.p_value(wins, losses), "alpha": test.alpha, "prior": round(test.prior, 3),
            "queries": tally.query_wins()}


def judge(limits: Limits, tally: Tally, impressions: int, started_at: datetime, now: datetime) -> Verdict:
    """Whether users have decided, and what follows for this kind of experiment.

    A challenge promotes a challenger users prefer and retires one they do not, or that they
    have not preferred by the experiment's limits (a tie keeps the champion). A watch (the
    previous champion as the challenger, after a promotion) rolls back when users prefer the
    previous champion, and keeps the new one otherwise.
    """
    test = SequentialTest(limits.alpha, limits.effect)
    facts = evidence(tally, impressions, test)
    wins, losses = tally.challenger, tally.champion
    score = f"{wins} impressions won by the challenger, {losses} by the champion, {tally.tie} ties"
    if impressions < limits.min_impressions:
        return Verdict(None, f"{impressions} of {limits.min_impressions} impressions before any decision",
                       facts)
    if test.significant(wins, losses):
        p = f"p = {facts['p_value']:.2g} < {limits.alpha}"
        if wins > losses:
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
