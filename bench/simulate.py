"""Simulated traffic for `bench/online.py`: people, a query stream, and the two tests compared.

Pure functions and small classes, no I/O: the harness plays them through the real services,
then replays what the services showed to compare interleaving with an A/B test on the same
impressions.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.interleaving import Credit, Tally, add_credit, net, share_of
from shared.ml.evaluate import ndcg_at
from shared.sequential import NO_STAKES, SequentialTest, moved

Z_975, Z_80 = 1.959964, 0.841621  # 5 % two-sided, 80 % power


@dataclass
class People:
    """Users who look less far down the list, sometimes click wrong, and often rate nothing.

    `silent`: share of searches with no rating at all; otherwise each result is examined with
    probability 1/rank^bias, an examined one left unrated with probability `skip`, and rated
    against its judgment, wrongly with probability `noise`. `flipped` users rate backwards.
    """

    bias: float = 0.7
    noise: float = 0.05
    skip: float = 0.1
    silent: float = 0.5
    flipped: bool = False
    rng: random.Random = field(default_factory=random.Random)

    def rate(self, shown: Sequence[str], relevant: set[str] | dict[str, int]) -> list[tuple[int, str]]:
        """(position in the list, label) for each result this person rates."""
        if self.rng.random() < self.silent:
            return []
        out = []
        for i, resource_id in enumerate(shown):
            if self.rng.random() > 1.0 / (i + 1) ** self.bias or self.rng.random() < self.skip:
                continue
            like = (resource_id in relevant) != (self.rng.random() < self.noise)
            out.append((i, "like" if like != self.flipped else "dislike"))
        return out


def expected_likes(people: People, shown: Sequence[str], relevant: set[str] | dict[str, int]) -> float:
    """Likes a search showing `shown` gets from these people on average: the judgments read with
    their attention (1/rank^bias, skips, silence, noise), what an A/B test on likes estimates."""
    rated = (1 - people.silent) * (1 - people.skip)
    total = 0.0
    for i, resource_id in enumerate(shown):
        right = (resource_id in relevant) != people.flipped
        total += rated / (i + 1) ** people.bias * ((1 - people.noise) if right else people.noise)
    return total


@dataclass
class Stream:
    """Queries as real traffic asks them: Zipf popularity, and new queries keep arriving.

    At the start a fifth of the queries exist; the rest arrive in a random order, evenly over the
    stream. Each query's popularity is 1/rank^s for a random rank among all of them."""

    queries: Sequence[str]
    length: int
    rng: random.Random
    s: float = 1.0
    start_share: float = 0.2

    def __post_init__(self) -> None:
        self.order = list(self.queries)
        self.rng.shuffle(self.order)
        ranks = list(range(1, len(self.order) + 1))
        self.rng.shuffle(ranks)
        self.weight = {q: 1.0 / r**self.s for q, r in zip(self.order, ranks, strict=True)}

    def at(self, step: int) -> str:
        available = self.order[: max(1, round(len(self.order) * (
            self.start_share + (1 - self.start_share) * step / max(1, self.length - 1))))]
        return self.rng.choices(available, weights=[self.weight[q] for q in available])[0]


def ndcg10(shown: Sequence[str], judged: dict[str, int]) -> float:
    return ndcg_at([float(judged.get(r, 0)) for r in shown], [float(g) for g in judged.values()], 10)


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


def interleaved_credit(impression: Impression, ratings: list[tuple[int, str]]) -> Credit:
    credit: Credit = (0.0, 0.0)
    for position, label in ratings:
        share = impression.shares[position] if impression.shares else None
        credit = add_credit(credit, share_of(impression.teams[position], share), label)  # type: ignore[arg-type]
    return credit


def likes(ratings: list[tuple[int, str]]) -> int:
    return sum(label == "like" for _, label in ratings)


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
                     test: SequentialTest, floor: int, rng: random.Random, people: People,
                     cap: int) -> Run:
    """One resampled experiment judged by the product's rule on the logged interleaved lists."""
    tally, run = Tally(), Run()
    for n in range(1, cap + 1):
        impression = rng.choice(impressions)
        ratings = people.rate(impression.shown, qrels[impression.query])
        if ratings:
            tally = tally.moved(None, interleaved_credit(impression, ratings))
        if ratings and test.significant(tally.stakes):
            run.saw(n, "challenger" if test.favours_challenger(tally.stakes) else "champion", floor)
            if run.done():
                break
    return run


def ab_run(impressions: Sequence[Impression], qrels: dict[str, dict[str, int]], test: SequentialTest,
           floor: int, rng: random.Random, people: People, cap: int) -> Run:
    """The same traffic as an A/B test judged by the same rule: searches in pairs, one shown the
    champion's list alone and one the challenger's; the pair's value is the difference of their
    likes (mean 0 when neither list gets more), bet on as the product bets on net credits."""
    stakes, run = NO_STAKES, Run()
    for n in range(2, cap + 1, 2):
        difference = 0
        for sign, side in ((-1, "champion"), (1, "challenger")):
            impression = rng.choice(impressions)
            difference += sign * likes(people.rate(getattr(impression, side), qrels[impression.query]))
        stakes = moved(stakes, None, float(difference))
        if test.significant(stakes):
            run.saw(n, "challenger" if test.favours_challenger(stakes) else "champion", floor)
            if run.done():
                break
    return run


def ab_normal_run(impressions: Sequence[Impression], qrels: dict[str, dict[str, int]], alpha: float,
                  tau: float, floor: int, rng: random.Random, people: People, cap: int) -> Run:
    """The A/B test as often run: the normal-mixture SPRT on the difference of like rates, its
    variance plugged in (valid as samples grow), its spread `tau` set by the caller to the true
    difference, which favours it. A reference beside the same-rule comparison."""
    sums, squares, counts = [0.0, 0.0], [0.0, 0.0], [0, 0]
    threshold, run = math.log(1 / alpha), Run()
    for n in range(1, cap + 1):
        impression = rng.choice(impressions)
        arm = n % 2
        shown = impression.champion if arm == 0 else impression.challenger
        value = likes(people.rate(shown, qrels[impression.query]))
        sums[arm] += value
        squares[arm] += value * value
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
                  people: People, draws: int = 4000) -> dict[str, float]:
    """Impressions a fixed-sample test needs at 80 % power, 5 % two-sided, for each method.

    Interleaving: a z-test on the mean net credit per impression. A/B: a two-sample z-test on
    likes per search, half the impressions to each ranker. From `draws` simulated ratings of the
    logged impressions."""
    credits: list[float] = []
    arms: list[list[int]] = [[], []]
    for _ in range(draws):
        impression = rng.choice(impressions)
        ratings = people.rate(impression.shown, qrels[impression.query])
        credits.append(net(interleaved_credit(impression, ratings)))
        for arm, shown in enumerate((impression.champion, impression.challenger)):
            arms[arm].append(likes(people.rate(shown, qrels[impression.query])))
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
