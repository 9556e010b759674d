"""Probabilistic interleaving and click credit: two rankers share one result list, users decide.

Pure functions, no I/O. The reranker interleaves; the collector and the aggregator credit
feedback with the same rules, and the store's records can be recounted by them after a loss.

One interleaved search is an *impression*. Each shown result carries the challenger's *share* of
its credit: the chance, given the list shown, that the challenger placed it (1 or 0 in lists
logged by team-draft interleaving, which EduRanker used before). A like gives the challenger
that share and the champion the rest; a dislike takes as much away. The impression's *net
credit* is the challenger's minus the champion's: the sequential test's per-impression value
(`shared/sequential.py`). The impression goes to the side with more credit, is a tie when both
have the same, and has no winner while nobody rated it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, NamedTuple

from shared.sequential import NO_STAKES, Stakes, moved

if TYPE_CHECKING:
    from shared.store import Feedback

Team = Literal["champion", "challenger"]
Outcome = Literal["champion", "challenger", "tie"]
TEAMS: tuple[Team, Team] = ("champion", "challenger")
Credit = tuple[float, float]
"""An impression's credit so far: (champion, challenger)."""
CHALLENGER_PREFIX = "challenger."
"""In an interleaved answer, the challenger's scores sit beside the champion's in each result's
`scores` under this prefix (how a client or a harness tells an interleaved answer)."""
TAU = 5.0
"""The softmax's exponent: a ranker draws its rank-r result with weight 1/r^TAU. Hofmann et al.
used 3; 5 decided as fast and as rightly in `bench/interleaving_study.py` while showing lists
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


def share_of(team: Team, share: float | None) -> float:
    """The challenger's share of a result's credit (team-draft logs carry only the team)."""
    if share is not None:
        return share
    return 1.0 if team == "challenger" else 0.0


def label_credit(label: str | None) -> int:
    return 0 if label is None else (1 if label == "like" else -1)


def add_credit(credit: Credit, share: float, label: str, previous_label: str | None = None) -> Credit:
    """A new label adds its credit, split by the challenger's `share`; a changed one takes the old
    label's back first. Rounded, so that the same labels give the same credit in any order."""
    delta = label_credit(label) - label_credit(previous_label)
    champion, challenger = credit
    return round(champion + delta * (1 - share), 9), round(challenger + delta * share, 9)


def net(credit: Credit) -> float:
    """The challenger's credit minus the champion's: the test's value for this impression."""
    return round(credit[1] - credit[0], 9)


def outcome(credit: Credit) -> Outcome:
    difference = net(credit)
    return "challenger" if difference > 0 else "champion" if difference < 0 else "tie"


@dataclass(frozen=True)
class Tally:
    """Rated impressions of one experiment, by outcome, and the same per query; the sum of their
    net credits and the bettors' log-wealths (`shared/sequential.py`)."""

    champion: int = 0
    challenger: int = 0
    tie: int = 0
    # query key -> [champion wins, challenger wins, ties]
    queries: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    # Queries won by each side, where only these totals are kept (the aggregator's live tally).
    query_totals: Mapping[str, int] | None = None
    net: float = 0.0
    stakes: Stakes = NO_STAKES

    @property
    def rated(self) -> int:
        return self.champion + self.challenger + self.tie

    def moved(self, before: Credit | None, after: Credit, query_key: str = "") -> Tally:
        """The impression's credit went from `before` (None: not rated yet) to `after`."""
        counts = {"champion": self.champion, "challenger": self.challenger, "tie": self.tie}
        per_query = list(self.queries.get(query_key, (0, 0, 0)))
        slot = {"champion": 0, "challenger": 1, "tie": 2}
        if before is not None:
            counts[outcome(before)] -= 1
            per_query[slot[outcome(before)]] -= 1
        counts[outcome(after)] += 1
        per_query[slot[outcome(after)]] += 1
        was = net(before) if before is not None else None
        return replace(self, **counts, queries={**self.queries, query_key: tuple(per_query)},
                       net=round(self.net + net(after) - (was or 0.0), 9),
                       stakes=moved(self.stakes, was, net(after)))

    def query_wins(self) -> dict[str, int]:
        """Queries each side won on more impressions: a check that no single query decides alone."""
        if self.query_totals is not None:
            return dict(self.query_totals)
        won = {"champion": 0, "challenger": 0, "tie": 0}
        for champion, challenger, _ in self.queries.values():
            won[outcome((champion, challenger))] += 1
        return won


QueryCredit = tuple[int, int, int]
"""One query's impressions in an experiment: (won by the champion, by the challenger, ties)."""
SLOT = {"champion": 0, "challenger": 1, "tie": 2}


def query_outcome(credit: QueryCredit) -> Outcome:
    return outcome((credit[0], credit[1]))


@dataclass(frozen=True)
class Live:
    """An experiment's tally as a stream keeps it: rated impressions by winner, queries by winner,
    the net credit and the bettors' log-wealths. Each impression's credit and each query's
    outcomes are kept beside it, by the caller."""

    champion: int = 0
    challenger: int = 0
    tie: int = 0
    queries: Mapping[str, int] = field(default_factory=lambda: {"champion": 0, "challenger": 0, "tie": 0})
    net: float = 0.0
    stakes: Stakes = NO_STAKES

    def __post_init__(self) -> None:  # read back from JSON (the aggregator's table), a list
        object.__setattr__(self, "stakes", tuple(self.stakes))

    def credited(self, impression: Credit | None, query: QueryCredit | None, share: float, label: str,
                 previous_label: str | None) -> tuple[Live, Credit, QueryCredit]:
        """One feedback on an interleaved result: the tally, its impression's and its query's credit."""
        after = add_credit(impression or (0.0, 0.0), share, label, previous_label)
        counts = {"champion": self.champion, "challenger": self.challenger, "tie": self.tie}
        per_query = list(query or (0, 0, 0))
        queries = dict(self.queries)
        if query is not None:
            queries[query_outcome(query)] -= 1
        if impression is not None:
            counts[outcome(impression)] -= 1
            per_query[SLOT[outcome(impression)]] -= 1
        counts[outcome(after)] += 1
        per_query[SLOT[outcome(after)]] += 1
        moved_query: QueryCredit = (per_query[0], per_query[1], per_query[2])
        queries[query_outcome(moved_query)] += 1
        was = net(impression) if impression is not None else None
        live = Live(**counts, queries=queries, net=round(self.net + net(after) - (was or 0.0), 9),
                    stakes=moved(self.stakes, was, net(after)))
        return live, after, moved_query

    def tally(self) -> Tally:
        return Tally(champion=self.champion, challenger=self.challenger, tie=self.tie,
                     query_totals=self.queries, net=self.net, stakes=self.stakes)

    @classmethod
    def of(cls, tally: Tally) -> Live:
        return cls(tally.champion, tally.challenger, tally.tie, tally.query_wins(), tally.net, tally.stakes)


@dataclass(frozen=True)
class Rated:
    """One stored feedback seen by the recount: which impression, the challenger's share of the
    rated result, its latest label."""

    inference_id: str
    share: float
    label: str
    query_key: str = ""


def recount(feedback: Iterable[Rated]) -> tuple[Tally, dict[str, Credit]]:
    """An experiment's tally and each impression's credit from the stored feedback (latest labels)."""
    credits: dict[str, Credit] = {}
    keys: dict[str, str] = {}
    for item in feedback:
        credits[item.inference_id] = add_credit(credits.get(item.inference_id, (0.0, 0.0)), item.share,
                                                item.label)
        keys[item.inference_id] = item.query_key
    tally = Tally()
    for inference_id, credit in credits.items():
        tally = tally.moved(None, credit, keys[inference_id])
    return tally, credits


def rated(feedback: Iterable[Feedback]) -> list[Rated]:
    """The stored feedback an experiment's recount reads (only what was given on interleaved results)."""
    return [Rated(f.inference_id, share_of(f.interleaved.team, f.interleaved.share), f.label,
                  f.interleaved.query_key)
            for f in feedback if f.interleaved is not None]


def query_key(query: str) -> str:
    """Queries are credited under a short hash of their normalised text (no query text in events)."""
    return hashlib.sha1(" ".join(query.lower().split()).encode()).hexdigest()[:16]
