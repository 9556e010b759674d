"""Probabilistic interleaving: two rankers share one result list, users decide.

Pure functions, no I/O. The reranker interleaves; the collector and the aggregator credit what
people do on the list with the rules of `shared/online/credit.py`.

One interleaved search is an *impression*. Each shown result carries the challenger's *share* of
its credit: the chance, given the list shown, that the challenger placed it (1 or 0 in lists
logged by team-draft interleaving, which EduRanker used before).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import NamedTuple

from shared.records import normalise_query
from shared.vocab import TEAMS, Team

CHALLENGER_PREFIX = "challenger."
"""In an interleaved answer, the challenger's scores sit beside the champion's in each result's
`scores` under this prefix (how a client or a harness tells an interleaved answer)."""
TAU = 5.0
"""The softmax's exponent: a ranker draws its rank-r result with weight 1/r^TAU. Hofmann et al.
used 3; 5 decided as fast and as rightly in `bench/studies/interleaving.py` while showing lists
closer to the rankers' own (fewer likes lost during an experiment)."""


def takes_part(inference_id: str, experiment_id: str, share: float) -> bool:
    """Whether a search is interleaved: a hash of the ids, so replaying the log gives the same answer."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{experiment_id}:{inference_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class Placed(NamedTuple):
    """One shown result: the ranker whose draw placed it, and the challenger's share of its credit."""

    resource_id: str
    team: Team
    share: float


def interleave(champion: Sequence[str], challenger: Sequence[str], k: int, seed: str,
               tau: float = TAU) -> list[Placed]:
    """Probabilistic interleaving (Hofmann, Whiteson and de Rijke 2011) of two rankings, top `k`.

    For each position a fair coin picks a ranker, which draws one of the results not shown yet
    with probability proportional to 1/rank^tau (its best one most of the time). The credit is
    marginalised over which ranker could have drawn each result (Hofmann, Whiteson and de Rijke
    2013): the challenger's share of position i is p_challenger / (p_champion + p_challenger),
    both rankers' probabilities of drawing that result there. Since the coins are fair, that share
    averages 1/2 at every position over the lists shown, so users who click without regard to the
    results credit neither ranker, whatever their position bias; a result both rankers put equally
    high credits each half; one that only a ranker puts high credits mostly that ranker, however
    deep the other puts it, which is how this sees past the top few of each list. Duplicates
    within a ranking are skipped; a result a ranking lacks ranks just below its end. `seed` (the
    inference id) makes the draws repeatable.
    """
    rng = random.Random(seed)
    lists: dict[Team, list[str]] = {"champion": list(dict.fromkeys(champion)),
                                    "challenger": list(dict.fromkeys(challenger))}
    pool = list(dict.fromkeys([*lists["champion"], *lists["challenger"]]))
    weight: dict[Team, dict[str, float]] = {}
    for team, ranking in lists.items():
        ranks = {resource_id: r for r, resource_id in enumerate(ranking, start=1)}
        weight[team] = {d: 1.0 / ranks.get(d, len(ranking) + 1) ** tau for d in pool}
    order: dict[Team, list[str]] = {team: sorted(pool, key=lambda d, t=team: -weight[t][d]) for team in TEAMS}
    free = set(pool)
    shown: list[Placed] = []
    while len(shown) < k and free:
        team: Team = "challenger" if rng.random() < 0.5 else "champion"
        totals = {t: sum(weight[t][d] for d in free) for t in TEAMS}
        point, picked = rng.random() * totals[team], None
        for d in order[team]:
            if d in free:
                picked = d
                point -= weight[team][d]
                if point < 0:
                    break
        assert picked is not None
        champion_p = weight["champion"][picked] / totals["champion"]
        challenger_p = weight["challenger"][picked] / totals["challenger"]
        shown.append(Placed(picked, team, round(challenger_p / (champion_p + challenger_p), 6)))
        free.discard(picked)
    return shown


def query_key(query: str) -> str:
    """Queries are credited under a short hash of their normalised text (no query text in events)."""
    return hashlib.sha1(normalise_query(query).encode()).hexdigest()[:16]
