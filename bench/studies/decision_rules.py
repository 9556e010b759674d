"""Sequential decision rules, vectorised over a chunk of impressions, for the interleaving study.

Each rule keeps its running state across chunks and, for a chunk of per-impression values,
says after which impressions its evidence crossed 1/alpha and in which direction. They are the
product's rule (`shared/online/betting.py`, checked to agree on the same values) and the one it
replaced, written for numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import betaln

from shared.online.betting import CLIP, FRACTIONS, NO_STAKES, moved


@dataclass
class SignRule:
    """The mixture SPRT on impressions with a winner (the product's rule before this study): the
    likelihood ratio of a Beta(a, a) mixture over the challenger's win rate against 1/2."""

    alpha: float
    effect: float
    wins: int = 0
    losses: int = 0

    def step(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = max((1.0 / (4.0 * self.effect**2) - 1.0) / 2.0, 0.5)  # Beta(a, a): sd `effect` around 1/2
        wins = self.wins + np.cumsum(values > 0)
        losses = self.losses + np.cumsum(values < 0)
        self.wins, self.losses = int(wins[-1]), int(losses[-1])
        llr = betaln(wins + a, losses + a) - betaln(a, a) + (wins + losses) * math.log(2.0)
        return llr >= math.log(1 / self.alpha), np.sign(wins - losses)


@dataclass
class BettingRule:
    """A mixture of bettors on the mean of a bounded per-impression value (clipped to +-`clip`).

    Bettor j multiplies its wealth by 1 + l_j * y for each impression's y = value / clip, with
    fixed fractions l_j on both sides; under "no preference" (mean zero) each wealth, and their
    average, is a non-negative martingale of mean 1, so Ville's inequality bounds the chance it
    ever reaches 1/alpha by alpha (testing by betting; Waudby-Smith and Ramdas 2023)."""

    alpha: float
    clip: float
    fractions: np.ndarray = field(default_factory=lambda: np.array([]))
    logs: np.ndarray = field(default_factory=lambda: np.array([]))

    def __post_init__(self) -> None:
        if not self.fractions.size:
            self.fractions = np.array(FRACTIONS)
        self.logs = np.zeros(self.fractions.size)

    def step(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.clip(values, -self.clip, self.clip) / self.clip
        logs = self.logs + np.cumsum(np.log1p(np.outer(y, self.fractions)), axis=0)
        self.logs = logs[-1]
        top = logs.max(axis=1)
        wealth = top + np.log(np.exp(logs - top[:, None]).mean(axis=1))
        up = logs[:, self.fractions > 0]
        down = logs[:, self.fractions < 0]
        return wealth >= math.log(1 / self.alpha), np.where(up.max(axis=1) >= down.max(axis=1), 1, -1)


@dataclass
class NormalRule:
    """The A/B test of `bench.online_replay`: the normal-mixture SPRT on a difference of two means,
    with a plug-in variance (valid as the samples grow) and a mixture spread `tau` set to the
    true difference, which favours it. Values are per pair of searches: (champion's, challenger's)."""

    alpha: float
    tau: float
    n: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(2))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def step(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = self.n + np.arange(1, len(pairs) + 1)
        sums = self.sums + np.cumsum(pairs, axis=0)
        squares = self.squares + np.cumsum(pairs**2, axis=0)
        self.n, self.sums, self.squares = int(counts[-1]), sums[-1], squares[-1]
        means = sums / counts[:, None]
        pooled = (squares - counts[:, None] * means**2).sum(axis=1) / np.maximum(2 * counts - 2, 1)
        v = np.maximum(pooled, 1e-9) * 2 / counts
        d = means[:, 1] - means[:, 0]
        tau2 = max(self.tau, 1e-3) ** 2
        llr = 0.5 * np.log(v / (v + tau2)) + tau2 * d * d / (2 * v * (v + tau2))
        return (llr >= math.log(1 / self.alpha)) & (counts >= 2), np.sign(d)


Rule = SignRule | BettingRule | NormalRule


def agrees_with_the_product(alpha: float) -> bool:
    """The vectorised betting rule gives the product's log-wealth on the same credits."""
    values = np.random.default_rng(0).normal(0.1, 1.0, 500)
    rule = BettingRule(alpha, CLIP)
    rule.step(values)
    stakes = NO_STAKES
    for value in values:
        stakes = moved(stakes, None, float(value))
    return bool(np.allclose(rule.logs, stakes, atol=1e-8))


@dataclass
class Crossing:
    """When a rule first decided, with and without a minimum of impressions before any decision."""

    decision: int = 0
    at: int | None = None
    decision_floor: int = 0
    at_floor: int | None = None


def first_crossings(crossed: np.ndarray, direction: np.ndarray, start: int, per_value: int, floor: int,
                    found: Crossing) -> Crossing:
    """Updates `found` with this chunk's first crossings; `start` counts impressions before it and
    `per_value` impressions per value (2 for an A/B pair of searches)."""
    impressions = start + per_value * np.arange(1, len(crossed) + 1)
    if found.at is None and crossed.any():
        i = int(np.argmax(crossed))
        found.at, found.decision = int(impressions[i]), int(direction[i])
    late = crossed & (impressions >= floor)
    if found.at_floor is None and late.any():
        i = int(np.argmax(late))
        found.at_floor, found.decision_floor = int(impressions[i]), int(direction[i])
    return found


def rules_for(kind: str, alpha: float, effect: float, clip: float, tau: float = 0.0) -> Rule:
    if kind == "sign":
        return SignRule(alpha, effect)
    if kind == "bet":
        return BettingRule(alpha, clip)
    return NormalRule(alpha, tau)
