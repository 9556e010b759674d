"""Replays for `python -m bench.online`: interleaving against an A/B test on the same impressions.

Pure functions and small classes, no I/O: the benchmark plays simulated people through the real
services, then replays what the services showed, resampled, to the same people
(`tools.people`), to compare the impressions each method needs to decide. What the people do is
credited as the product credits it (`tools.people.worth`): with every kind of evidence, or with
ratings alone (the product before it learned from opens), on the same impressions.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from shared.online.betting import NO_STAKES, SequentialTest, moved
from shared.online.credit import Credit, Tally, move_credit, net, share_of
from tools.people import Act, People, Searchers, worth

Person = People | Searchers

Z_975, Z_80 = 1.959964, 0.841621  # 5 % two-sided, 80 % power


@dataclass(frozen=True)
class Impression:
    """One interleaved search as logged: what each ranker would have shown, and the shown list."""

    query: str
    shown: tuple[str, ...]
    teams: tuple[str, ...]
    champion: tuple[str, ...]
    challenger: tuple[str, ...]
    shares: tuple[float | None, ...] = ()
    """The challenger's share of each shown result's credit (empty: by team, as team draft logged)."""


def interleaved_credit(impression: Impression, acts: list[Act], evidence: str = "all") -> Credit:
    credit: Credit = (0.0, 0.0)
    for position, value in worth(acts, evidence):
        share = impression.shares[position] if impression.shares else None
        credit = move_credit(credit, share_of(impression.teams[position], share), value)  # type: ignore[arg-type]
    return credit


def value(acts: list[Act], evidence: str = "all") -> float:
    """What a search earned: the credit of everything done on it (an A/B test's per-search metric)."""
    return sum(v for _, v in worth(acts, evidence))


@dataclass
class Run:
    """When one replay first decided, and what: with the product's minimum before any decision
    (`floor`) and without it, so that what each method needs is not capped by a policy."""

    decision: str | None = None
    at: int | None = None
    decision_floor: str | None = None
    at_floor: int | None = None

    def saw(self, n: int, decision: str, floor: int) -> None:
        if self.at is None:
            self.decision, self.at = decision, n
        if self.at_floor is None and n >= floor:
            self.decision_floor, self.at_floor = decision, n

    def done(self) -> bool:
        return self.at_floor is not None


def interleaving_run(impressions: Sequence[Impression], qrels: dict[str, dict[str, int]],
                     test: SequentialTest, floor: int, rng: random.Random, people: Person,
                     cap: int, evidence: str = "all") -> Run:
    """One resampled experiment judged by the product's rule on the logged interleaved lists."""
    tally, run = Tally(), Run()
    for n in range(1, cap + 1):
        impression = rng.choice(impressions)
        acts = people.act(impression.shown, qrels[impression.query], rng)
        acted = bool(worth(acts, evidence))
        if acted:
            tally = tally.moved(None, interleaved_credit(impression, acts, evidence))
        if acted and test.significant(tally.stakes):
            run.saw(n, "challenger" if test.favours_challenger(tally.stakes) else "champion", floor)
            if run.done():
                break
    return run


def ab_run(impressions: Sequence[Impression], qrels: dict[str, dict[str, int]], test: SequentialTest,
           floor: int, rng: random.Random, people: Person, cap: int, evidence: str = "all") -> Run:
    """The same traffic as an A/B test judged by the same rule: searches in pairs, one shown the
    champion's list alone and one the challenger's; the pair's value is the difference of what they
    earned (mean 0 when neither list earns more), bet on as the product bets on net credits."""
    stakes, run = NO_STAKES, Run()
    for n in range(2, cap + 1, 2):
        difference = 0.0
        for sign, side in ((-1, "champion"), (1, "challenger")):
            impression = rng.choice(impressions)
            difference += sign * value(people.act(getattr(impression, side), qrels[impression.query], rng),
                                       evidence)
        stakes = moved(stakes, None, difference)
        if test.significant(stakes):
            run.saw(n, "challenger" if test.favours_challenger(stakes) else "champion", floor)
            if run.done():
                break
    return run


def ab_normal_run(impressions: Sequence[Impression], qrels: dict[str, dict[str, int]], alpha: float,
                  tau: float, floor: int, rng: random.Random, people: Person, cap: int,
                  evidence: str = "all") -> Run:
    """The A/B test as often run: the normal-mixture SPRT on the difference of the arms' mean
    earnings per search, its variance plugged in (valid as samples grow), its spread `tau` set by
    the caller to the true difference, which favours it. A reference beside the same-rule
    comparison."""
    sums, squares, counts = [0.0, 0.0], [0.0, 0.0], [0, 0]
    threshold, run = math.log(1 / alpha), Run()
    for n in range(1, cap + 1):
        impression = rng.choice(impressions)
        arm = n % 2
        shown = impression.champion if arm == 0 else impression.challenger
        earned = value(people.act(shown, qrels[impression.query], rng), evidence)
        sums[arm] += earned
        squares[arm] += earned * earned
        counts[arm] += 1
        if min(counts) < 2:
            continue
        means = [sums[i] / counts[i] for i in (0, 1)]
        pooled = sum(squares[i] - counts[i] * means[i] ** 2 for i in (0, 1)) / (sum(counts) - 2)
        v = max(pooled, 1e-9) * (1 / counts[0] + 1 / counts[1])
        d = means[1] - means[0]
        log_lr = 0.5 * math.log(v / (v + tau**2)) + tau**2 * d * d / (2 * v * (v + tau**2))
        if log_lr >= threshold:
            run.saw(n, "challenger" if d > 0 else "champion", floor)
            if run.done():
                break
    return run


def fixed_horizon(impressions: Sequence[Impression], qrels: dict[str, dict[str, int]], rng: random.Random,
                  people: Person, draws: int = 4000, evidence: str = "all") -> dict[str, float]:
    """Impressions a fixed-sample test needs at 80 % power, 5 % two-sided, for each method.

    Interleaving: a z-test on the mean net credit per impression. A/B: a two-sample z-test on what
    a search earns, half the impressions to each ranker. From `draws` simulated visits of the
    logged impressions."""
    credits: list[float] = []
    arms: list[list[float]] = [[], []]
    for _ in range(draws):
        impression = rng.choice(impressions)
        acts = people.act(impression.shown, qrels[impression.query], rng)
        credits.append(net(interleaved_credit(impression, acts, evidence)))
        for arm, shown in enumerate((impression.champion, impression.challenger)):
            arms[arm].append(value(people.act(shown, qrels[impression.query], rng), evidence))
    result = {"mean_credit": statistics.mean(credits),
              "win_rate": sum(c > 0 for c in credits) / max(1, sum(c != 0 for c in credits))}
    if abs(result["mean_credit"]) > 1e-9:
        result["interleaving"] = ((Z_975 + Z_80) * statistics.pstdev(credits) / result["mean_credit"]) ** 2
    delta = statistics.mean(arms[1]) - statistics.mean(arms[0])
    result["like_rate_champion"], result["like_rate_challenger"] = map(statistics.mean, arms)
    if abs(delta) > 1e-9:
        variance = statistics.pvariance(arms[0]) + statistics.pvariance(arms[1])
        result["ab"] = 2 * (Z_975 + Z_80) ** 2 * variance / delta**2
    return result


def summary(runs: list[Run], truth: str, floor: bool, cap: int) -> dict[str, float]:
    """Impressions to a decision, and how often (counts) it was right, wrong or never came.

    `floor`: with the product's minimum before any decision, or without it. `median_impressions`
    counts a run that never decided at its cap, so it is a lower bound when `undecided` is large;
    `median_decided` is over the runs that decided."""
    pairs = [(r.decision_floor, r.at_floor) if floor else (r.decision, r.at) for r in runs]
    used = [n if n is not None else cap for _, n in pairs]
    decided = [n for d, n in pairs if d is not None]
    return {"median_impressions": statistics.median(used) if used else float("nan"),
            "median_decided": statistics.median(decided) if decided else float("nan"),
            "right": sum(d == truth for d, _ in pairs),
            "wrong": sum(d is not None and d != truth for d, _ in pairs),
            "false_promotions": sum(d == "challenger" != truth for d, _ in pairs),
            "undecided": sum(d is None for d, _ in pairs), "runs": len(runs)}
