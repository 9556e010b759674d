"""Interleaving methods as distributions over shown lists, for `bench.studies.interleaving`.

Each method turns a champion's and a challenger's ranking of one query into the lists it may
show, each with its probability, and for every shown position the credit a like there gives
the challenger (negative: the champion). A dislike takes the same credit away. The study then
simulates people on these lists, many experiments at once, without calling the services.

- team draft (Radlinski, Kurup and Joachims 2008), as EduRanker served it before this study;
- probabilistic interleaving (Hofmann, Whiteson and de Rijke 2011), the product's own
  (`shared.online.interleaving.interleave`) and, to vary its exponent quickly, a vectorised copy (the
  study checks that the two agree): at each position a coin picks
  a ranker, which draws a result by a softmax over its ranks (1/rank^tau, tau = 3), among those
  not shown yet; credit is marginalised over which ranker could have placed each result (Hofmann
  et al. 2013), so a result both rankers put high credits neither much;
- optimized interleaving (Radlinski and Craswell 2013): lists whose every prefix is the union of
  a prefix of each ranking; a like on d credits the challenger 1/rank_challenger(d) -
  1/rank_champion(d) (the ranker that puts d higher gains); probabilities from a linear program so
  that a person clicking at random, whatever their position bias, credits neither ranker.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from shared.online.interleaving import Placed, interleave
from shared.vocab import Team


@dataclass(frozen=True)
class Lists:
    """A method's lists for one query: probability, shown ids, a like's credit to the challenger."""

    probabilities: np.ndarray  # (n,)
    shown: list[tuple[str, ...]]
    credit: np.ndarray  # (n, k): + for the challenger, - for the champion


def team_draft(champion: Sequence[str], challenger: Sequence[str], k: int,
               seed: str) -> list[tuple[str, Team]]:
    """Team-draft interleaving (Radlinski, Kurup and Joachims, 2008) of two rankings, top `k`:
    what EduRanker served before this study, kept as it was for the comparison.

    Teams take turns: the one with fewer picks goes next, a coin decides when both have as many;
    each picks its best result not shown yet. Each team thus places about half the list, the
    same share of top positions on average, so a click on a result says which ranker users
    preferred there. Duplicates within a ranking are skipped; when one ranking runs out the other
    fills the list. `seed` (the inference id) makes the coins repeatable.
    """
    rng = random.Random(seed)
    lists: dict[Team, Sequence[str]] = {"champion": champion, "challenger": challenger}
    cursor: dict[Team, int] = {"champion": 0, "challenger": 0}
    picks: dict[Team, int] = {"champion": 0, "challenger": 0}
    shown: list[tuple[str, Team]] = []
    seen: set[str] = set()

    def next_of(team: Team) -> str | None:
        ranking = lists[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in seen:
            cursor[team] += 1
        return ranking[cursor[team]] if cursor[team] < len(ranking) else None

    while len(shown) < k:
        first: Team
        if picks["champion"] != picks["challenger"]:
            first = "champion" if picks["champion"] < picks["challenger"] else "challenger"
        else:
            first = "champion" if rng.random() < 0.5 else "challenger"
        team: Team = first
        item = next_of(team)
        if item is None:
            team = "challenger" if first == "champion" else "champion"
            item = next_of(team)
            if item is None:
                break
        shown.append((item, team))
        seen.add(item)
        picks[team] += 1
    return shown


def team_draft_lists(champion: Sequence[str], challenger: Sequence[str], k: int) -> Lists:
    """Every list team draft can show, with its probability (each coin it tosses halves it): the
    exact distribution `team_draft` samples; a like credits the team that placed the result."""
    lists: dict[Team, Sequence[str]] = {"champion": champion, "challenger": challenger}
    out: list[tuple[float, tuple[tuple[str, float], ...]]] = []

    def grow(shown: tuple[tuple[str, float], ...], picks: dict[Team, int], probability: float) -> None:
        seen = {d for d, _ in shown}
        free = {t: [d for d in lists[t] if d not in seen] for t in lists}
        if len(shown) == k or not (free["champion"] or free["challenger"]):
            out.append((probability, shown))
            return
        if picks["champion"] != picks["challenger"]:
            firsts = [("champion" if picks["champion"] < picks["challenger"] else "challenger", 1.0)]
        else:
            firsts = [("champion", 0.5), ("challenger", 0.5)]
        for first, chance in firsts:
            team: Team = first if free[first] else ("challenger" if first == "champion" else "champion")
            placed = (free[team][0], 1.0 if team == "challenger" else -1.0)
            grow((*shown, placed), {**picks, team: picks[team] + 1}, probability * chance)

    grow((), {"champion": 0, "challenger": 0}, 1.0)
    credit = np.zeros((len(out), k))
    for row, (_, shown) in enumerate(out):
        credit[row, :len(shown)] = [c for _, c in shown]
    return Lists(np.array([p for p, _ in out]), [tuple(d for d, _ in shown) for _, shown in out], credit)


def centred(lists: Lists) -> Lists:
    """A sample of a method's lists whose credit averages 0 at every position, as the method's full
    distribution does (probabilistic interleaving: the challenger's share averages 1/2 at each
    position): a finite sample reused for every impression would otherwise lean one way a little,
    which people clicking at random would reveal over tens of thousands of impressions."""
    return Lists(lists.probabilities, lists.shown, lists.credit - lists.probabilities @ lists.credit)


def product_lists(champion: Sequence[str], challenger: Sequence[str], k: int, draws: int, salt: str) -> Lists:
    """The product's probabilistic interleaving (`shared.online.interleaving.interleave`) with `draws`
    inference ids, identical lists merged; a like's net credit to the challenger is 2 share - 1."""
    counts: dict[tuple[Placed, ...], int] = {}
    for i in range(draws):
        shown = tuple(interleave(champion, challenger, k, seed=f"{salt}:{i}"))
        counts[shown] = counts.get(shown, 0) + 1
    keys = list(counts)
    credit = np.zeros((len(keys), k))
    for row, shown in enumerate(keys):
        credit[row, :len(shown)] = [2 * p.share - 1 for p in shown]
    return Lists(np.array([counts[s] for s in keys], dtype=float) / draws,
                 [tuple(p.resource_id for p in s) for s in keys], credit)


def probabilistic_lists(champion: Sequence[str], challenger: Sequence[str], k: int, draws: int,
                        seed: int, tau: float = 3.0) -> Lists:
    """Probabilistic interleaving, sampled `draws` times; marginalised credit per position.

    Both rankers order the same first-stage candidates, so each can place any result. Given the
    list shown, the chance that the challenger placed position i is its softmax probability of
    that result over the sum of both rankers' (the coins are fair and independent, and each
    ranker's draw depends only on what is shown above), hence a like's expected credit
    (p_challenger - p_champion) / (p_challenger + p_champion)."""
    rng = np.random.default_rng(seed)
    pool = list(dict.fromkeys([*champion, *challenger]))
    where_a = {d: i + 1 for i, d in enumerate(champion)}
    where_b = {d: i + 1 for i, d in enumerate(challenger)}
    # A result one ranking lacks goes just below its end.
    weight_a = np.array([1.0 / where_a.get(d, len(champion) + 1) ** tau for d in pool])
    weight_b = np.array([1.0 / where_b.get(d, len(challenger) + 1) ** tau for d in pool])
    free = np.ones((draws, len(pool)), dtype=bool)
    picked = np.zeros((draws, min(k, len(pool))), dtype=int)
    credit = np.zeros((draws, k))
    rows = np.arange(draws)
    for position in range(picked.shape[1]):
        pa = weight_a * free
        pa /= pa.sum(axis=1, keepdims=True)
        pb = weight_b * free
        pb /= pb.sum(axis=1, keepdims=True)
        chosen = np.where((rng.random(draws) < 0.5)[:, None], pb, pa)
        index = (rng.random(draws)[:, None] > np.cumsum(chosen, axis=1)).sum(axis=1)
        index = np.minimum(index, len(pool) - 1)
        while not free[rows, index].all():  # rounding past the last free result: take the last free one
            stuck = ~free[rows, index]
            index[stuck] = [np.flatnonzero(free[r])[-1] for r in rows[stuck]]
        a, b = pa[rows, index], pb[rows, index]
        credit[:, position] = (b - a) / (b + a)
        picked[:, position] = index
        free[rows, index] = False
    counts: dict[tuple[str, ...], int] = {}
    credits: dict[tuple[str, ...], np.ndarray] = {}
    for row in range(draws):
        key = tuple(pool[i] for i in picked[row])
        counts[key] = counts.get(key, 0) + 1
        credits[key] = credit[row]
    keys = list(counts)
    return Lists(np.array([counts[s] for s in keys], dtype=float) / draws, keys,
                 np.array([credits[s] for s in keys]))


def prefix_lists(champion: Sequence[str], challenger: Sequence[str], k: int) -> list[tuple[str, ...]]:
    """Every list whose prefixes are each the union of a prefix of both rankings."""
    out: set[tuple[str, ...]] = set()

    def grow(shown: tuple[str, ...], i: int, j: int) -> None:
        while i < len(champion) and champion[i] in shown:
            i += 1
        while j < len(challenger) and challenger[j] in shown:
            j += 1
        if len(shown) == k or (i >= len(champion) and j >= len(challenger)):
            out.add(shown)
            return
        if i < len(champion):
            grow((*shown, champion[i]), i + 1, j)
        if j < len(challenger) and (i >= len(champion) or challenger[j] != champion[i]):
            grow((*shown, challenger[j]), i, j + 1)

    grow((), 0, 0)
    return sorted(out)


def optimized_lists(champion: Sequence[str], challenger: Sequence[str], k: int,
                    credit_of_rank: Callable[[int], float] = lambda r: 1.0 / r) -> Lists:
    """Optimized interleaving: the prefix-constrained lists, weighted by a linear program.

    Constraints: probabilities sum to 1, and at every position the expected credit is zero (a
    random clicker credits no one, whatever their position bias). Objective (Schuth et al.
    2014's insensitivity): the expected squared difference of the rankers' credit under a
    1/position clicker, small when each list shows both rankers' best."""
    lists = prefix_lists(champion, challenger, k)
    rank_a = {d: i + 1 for i, d in enumerate(champion)}
    rank_b = {d: i + 1 for i, d in enumerate(challenger)}
    width = max(len(s) for s in lists)
    credit = np.zeros((len(lists), k))
    for row, shown in enumerate(lists):
        for position, d in enumerate(shown):
            credit[row, position] = (credit_of_rank(rank_b.get(d, len(challenger) + 1))
                                     - credit_of_rank(rank_a.get(d, len(champion) + 1)))
    clicker = 1.0 / np.arange(1, k + 1)
    objective = (credit @ clicker) ** 2
    equalities = np.vstack([np.ones(len(lists)), credit[:, :width].T])
    targets = np.concatenate([[1.0], np.zeros(width)])
    result = linprog(objective, A_eq=equalities, b_eq=targets, bounds=[(0, 1)] * len(lists), method="highs")
    if not result.success:  # no unbiased mixture of these lists: every list equally often
        return Lists(np.full(len(lists), 1.0 / len(lists)), lists, credit)
    probabilities = np.clip(result.x, 0, None)
    keep = probabilities > 1e-9
    kept = [shown for shown, chosen in zip(lists, keep, strict=True) if chosen]
    return Lists(probabilities[keep] / probabilities[keep].sum(), kept, credit[keep])
