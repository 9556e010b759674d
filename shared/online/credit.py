"""Credit: what people do on an interleaved list, counted for the side that placed it.

Pure functions, no I/O. The collector and the aggregator credit actions with the same rules,
and the store's records can be recounted by them after a loss. An action on a result is worth
its value (`shared/evidence/outcomes.py`: a like 1, a dislike -1, an open that satisfied a half,
a quick return minus a half); the challenger gets its share of the result's value and the
champion the rest. Credit is kept per *unit*: one voice on one query (`unit_key`), so a person
repeating a search is one unit however often they do, as one person is one voice in what the
model learns; a search with no user or session id is a unit of its own. The unit's *net credit*
is the challenger's minus the champion's: the sequential test's value (`shared/online/betting.py`,
which bounds it). A unit goes to the side with more credit, is a tie when both have the same, and
has no winner while nobody acted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from shared.evidence.outcomes import open_value, rating_value, voice
from shared.online.betting import NO_STAKES, Stakes, moved
from shared.records import Feedback, Interaction
from shared.vocab import Outcome, Team

Credit = tuple[float, float]
"""A unit's credit so far: (champion, challenger)."""


def unit_key(user_id: str | None, session_id: str | None, inference_id: str, query_key: str) -> str:
    """The unit an action on an interleaved result is credited to: its voice on its query."""
    return f"{voice(user_id, session_id, inference_id)}|{query_key}"


def share_of(team: Team, share: float | None) -> float:
    """The challenger's share of a result's credit (team-draft logs carry only the team)."""
    if share is not None:
        return share
    return 1.0 if team == "challenger" else 0.0


def move_credit(credit: Credit, share: float, delta: float) -> Credit:
    """A result's value changed by `delta`: split by the challenger's `share`. Rounded, so that
    the same actions give the same credit in any order."""
    champion, challenger = credit
    return round(champion + delta * (1 - share), 9), round(challenger + delta * share, 9)


def add_credit(credit: Credit, share: float, label: str, previous_label: str | None = None) -> Credit:
    """A new label adds its value; a changed one takes the old label's back first."""
    return move_credit(credit, share, rating_value(label) - rating_value(previous_label))


def net(credit: Credit) -> float:
    """The challenger's credit minus the champion's: the test's value for this impression."""
    return round(credit[1] - credit[0], 9)


def outcome(credit: Credit) -> Outcome:
    difference = net(credit)
    return "challenger" if difference > 0 else "champion" if difference < 0 else "tie"


@dataclass(frozen=True)
class Tally:
    """Rated impressions of one experiment, by outcome, and the same per query; the sum of their
    net credits and the bettors' log-wealths (`shared/online/betting.py`)."""

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

    def credited(self, impression: Credit | None, query: QueryCredit | None, share: float,
                 delta: float) -> tuple[Live, Credit, QueryCredit]:
        """One action on an interleaved result, changing its value by `delta`: the tally, its
        unit's and its query's credit."""
        after = move_credit(impression or (0.0, 0.0), share, delta)
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
    """One stored action seen by the recount: its unit, the challenger's share of the result it
    was on, its value as stored (a latest label, an open's longest dwell)."""

    unit: str
    share: float
    value: float
    query_key: str = ""


def recount(actions: Iterable[Rated]) -> tuple[Tally, dict[str, Credit]]:
    """An experiment's tally and each unit's credit from the stored actions."""
    credits: dict[str, Credit] = {}
    keys: dict[str, str] = {}
    for item in actions:
        credits[item.unit] = move_credit(credits.get(item.unit, (0.0, 0.0)), item.share, item.value)
        keys[item.unit] = item.query_key
    tally = Tally()
    for unit, credit in credits.items():
        tally = tally.moved(None, credit, keys[unit])
    return tally, credits


def rated(feedback: Iterable[Feedback], interactions: Iterable[Interaction] = ()) -> list[Rated]:
    """The stored actions an experiment's recount reads (only those on interleaved results)."""
    out = []
    for action in (*feedback, *interactions):
        tag = action.interleaved
        if tag is None:
            continue
        value = (rating_value(action.label) if isinstance(action, Feedback)
                 else open_value(action.dwell_s))
        out.append(Rated(unit_key(action.user_id, action.session_id, action.inference_id, tag.query_key),
                         share_of(tag.team, tag.share), value, tag.query_key))
    return out
