"""Team-draft interleaving and click credit: two rankers share one result list, users pick a winner.

Pure functions, no I/O. The reranker interleaves; the collector and the aggregator credit
feedback with the same rules, and the store's records can be recounted by them after a loss.

One interleaved search is an *impression*. Each like on a shown result credits the team that
placed it (+1), each dislike counts against it (-1); the impression goes to the team with more
credit, is a tie when both have the same, and has no winner while nobody rated it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from shared.store import Feedback

Team = Literal["champion", "challenger"]
Outcome = Literal["champion", "challenger", "tie"]
TEAMS: tuple[Team, Team] = ("champion", "challenger")
Credit = tuple[int, int]
"""An impression's credit so far: (champion, challenger)."""


def takes_part(inference_id: str, experiment_id: str, share: float) -> bool:
    """Whether a search is interleaved: a hash of the ids, so replaying the log gives the same answer."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{experiment_id}:{inference_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def team_draft(champion: Sequence[str], challenger: Sequence[str], k: int,
               seed: str) -> list[tuple[str, Team]]:
    """Team-draft interleaving (Radlinski, Kurup and Joachims, 2008) of two rankings, top `k`.

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


def label_credit(label: str | None) -> int:
    return 0 if label is None else (1 if label == "like" else -1)


def add_credit(credit: Credit, team: Team, label: str, previous_label: str | None = None) -> Credit:
    """A new label adds its credit; a changed one takes the old label's credit back first."""
    delta = label_credit(label) - label_credit(previous_label)
    champion, challenger = credit
    return (champion + delta, challenger) if team == "champion" else (champion, challenger + delta)


def outcome(credit: Credit) -> Outcome:
    champion, challenger = credit
    return "challenger" if challenger > champion else "champion" if champion > challenger else "tie"


@dataclass(frozen=True)
class Tally:
    """Rated impressions of one experiment, by outcome, and the same per query."""

    champion: int = 0
    challenger: int = 0
    tie: int = 0
    # query key -> [champion wins, challenger wins, ties]
    queries: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    # Queries won by each side, where only these totals are kept (the aggregator's live tally).
    query_totals: Mapping[str, int] | None = None

    @property
    def rated(self) -> int:
        return self.champion + self.challenger + self.tie

    def moved(self, before: Credit | None, after: Credit, query_key: str = "") -> Tally:
        """The impression's outcome went from `before` (None: not rated yet) to `after`."""
        counts = {"champion": self.champion, "challenger": self.challenger, "tie": self.tie}
        per_query = list(self.queries.get(query_key, (0, 0, 0)))
        slot = {"champion": 0, "challenger": 1, "tie": 2}
        if before is not None:
            counts[outcome(before)] -= 1
            per_query[slot[outcome(before)]] -= 1
        counts[outcome(after)] += 1
        per_query[slot[outcome(after)]] += 1
        return replace(self, **counts, queries={**self.queries, query_key: tuple(per_query)})

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
    """An experiment's tally as a stream keeps it: rated impressions by winner, and queries by
    winner. Each impression's credit and each query's outcomes are kept beside it, by the caller."""

    champion: int = 0
    challenger: int = 0
    tie: int = 0
    queries: Mapping[str, int] = field(default_factory=lambda: {"champion": 0, "challenger": 0, "tie": 0})

    def credited(self, impression: Credit | None, query: QueryCredit | None, team: Team, label: str,
                 previous_label: str | None) -> tuple[Live, Credit, QueryCredit]:
        """One feedback on an interleaved result: the tally, its impression's and its query's credit."""
        after = add_credit(impression or (0, 0), team, label, previous_label)
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
        moved: QueryCredit = (per_query[0], per_query[1], per_query[2])
        queries[query_outcome(moved)] += 1
        return Live(**counts, queries=queries), after, moved

    def tally(self) -> Tally:
        return Tally(champion=self.champion, challenger=self.challenger, tie=self.tie,
                     query_totals=self.queries)

    @classmethod
    def of(cls, tally: Tally) -> Live:
        return cls(tally.champion, tally.challenger, tally.tie, tally.query_wins())


@dataclass(frozen=True)
class Rated:
    """One stored feedback seen by the recount: which impression, which team, its latest label."""

    inference_id: str
    team: Team
    label: str
    query_key: str = ""


def recount(feedback: Iterable[Rated]) -> tuple[Tally, dict[str, Credit]]:
    """An experiment's tally and each impression's credit from the stored feedback (latest labels)."""
    credits: dict[str, Credit] = {}
    keys: dict[str, str] = {}
    for item in feedback:
        credits[item.inference_id] = add_credit(credits.get(item.inference_id, (0, 0)), item.team, item.label)
        keys[item.inference_id] = item.query_key
    tally = Tally()
    for inference_id, credit in credits.items():
        tally = tally.moved(None, credit, keys[inference_id])
    return tally, credits


def rated(feedback: Iterable[Feedback]) -> list[Rated]:
    """The stored feedback an experiment's recount reads (only what was given on interleaved results)."""
    return [Rated(f.inference_id, f.interleaved.team, f.label, f.interleaved.query_key)
            for f in feedback if f.interleaved is not None]


def query_key(query: str) -> str:
    """Queries are credited under a short hash of their normalised text (no query text in events)."""
    return hashlib.sha1(" ".join(query.lower().split()).encode()).hexdigest()[:16]
