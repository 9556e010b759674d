"""Evidence per (query, resource): what the people who saw it did, corrected for where it was shown.

Each *voice* (`outcomes.voice`) that was shown a resource for a query gives one vote on it, however
often it searched: its *exposure* is the chance it examined the resource at least once (1 once
it opened or rated it; else 1 - prod(1 - theta_rank) over its impressions, theta from
`clicks.py`, so a result seen at rank 8 counts far less than one seen at rank 1), and its *score*
is what it did: its latest rating plus the mean worth of its opens (`outcomes.py`), clipped to
[-1, 1]. A like outweighs any open; a person who opens and likes the same result 200 times is still
one voice of at most 1.

Each voice *contributes* score - baseline * exposure: what it did beyond what an average result
gets from as much attention (the baseline is that average over all the evidence), so a result
seen often and never opened sinks and one opened and stayed on rises; anonymous voices together
count as at most ANONYMOUS_VOICES (`outcomes.py`). The *net* is the sum of the contributions.

- What moves the ranking (the feedback memory) is the *value*, in (-1, 1): robust / (|robust| +
  SHRINK), where *robust* is the net without its strongest supporter and its strongest detractor.
  No single voice decides, either way: one person alone never moves a ranking however often they
  act, nor softens what everyone else passed over (a lone supporter left in lifted such a result
  above its neighbours); a few people agreeing move it a little, many move it far.
- What a training run fine-tunes on is one pair per (query, resource) someone acted on (opened or
  rated), labelled by the sign of the net, with as many votes as voices acted: one person's 400
  likes are one pair, as they were when feedback was the only evidence.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.evidence.clicks import Examination, prior_examination
from shared.evidence.outcomes import ANONYMOUS_VOICES, anonymous, open_value, rating_value

SHRINK = 2.0
"""Voices of net evidence at which a value reaches 1/2 (docs/evidence.md; bench/studies/evidence.py
measured 1, 2 and 4)."""


@dataclass(frozen=True)
class Impression:
    """One logged search: the normalised query, whose it was, what it showed (best first), and what
    ranked it (the version, or the experiment interleaving two)."""

    inference_id: str
    query: str
    voice: str
    shown: tuple[str, ...]
    ranker: str = ""


@dataclass(frozen=True)
class Action:
    """A voice's rating (`label`) or open (`dwell_s`, None until the person came back) of a shown
    result; `opened` is False for a rating alone."""

    inference_id: str
    resource_id: str
    voice: str
    label: str | None = None
    opened: bool = False
    dwell_s: float | None = None


@dataclass
class Vote:
    """One voice on one (query, resource), accumulated."""

    unseen: float = 1.0  # chance it never examined the resource
    ranks: list[int] = field(default_factory=list)
    label: str | None = None
    opens: list[float] = field(default_factory=list)

    @property
    def acted(self) -> bool:
        return self.label is not None or bool(self.opens)

    @property
    def exposure(self) -> float:
        return 1.0 if self.acted else 1.0 - self.unseen

    @property
    def score(self) -> float:
        opened = sum(self.opens) / len(self.opens) if self.opens else 0.0
        return max(-1.0, min(1.0, rating_value(self.label) + opened))


@dataclass(frozen=True)
class Judgment:
    query: str
    resource_id: str
    value: float
    """What the memory adds for it (robust: no single voice decides)."""
    net: float
    """All voices' contributions: the training pair's label is its sign."""
    voices: int
    acted: int
    exposure: float
    rank: float
    """Where it was shown, on average over its impressions (the gate's order check reads it)."""

    @property
    def label(self) -> int | None:
        """1 or 0 for a training pair; None where nobody acted on it or the voices cancel out."""
        if not self.acted or self.net == 0:
            return None
        return int(self.net > 0)


def votes(impressions: Iterable[Impression], actions: Iterable[Action],
          examination: Examination | None = None) -> dict[tuple[str, str], dict[str, Vote]]:
    """(query, resource) -> voice -> its vote. Actions are applied in the order given (the latest
    rating of a voice wins); an action on an impression not given is left out."""
    examination = examination or prior_examination()
    by_id = {impression.inference_id: impression for impression in impressions}
    table: dict[tuple[str, str], dict[str, Vote]] = defaultdict(dict)
    for impression in by_id.values():
        for rank, resource_id in enumerate(impression.shown, start=1):
            vote = table[(impression.query, resource_id)].setdefault(impression.voice, Vote())
            vote.unseen *= 1.0 - examination.at(rank)
            vote.ranks.append(rank)
    for action in actions:
        impression = by_id.get(action.inference_id)
        if impression is None or action.resource_id not in impression.shown:
            continue
        vote = table[(impression.query, action.resource_id)].setdefault(action.voice, Vote())
        if action.label is not None:
            vote.label = action.label
        if action.opened:
            vote.opens.append(open_value(action.dwell_s))
    return table


def baseline(table: dict[tuple[str, str], dict[str, Vote]]) -> float:
    """What an average result gets per unit of attention: all scores over all exposure."""
    scores = sum(v.score for voices in table.values() for v in voices.values())
    exposure = sum(v.exposure for voices in table.values() for v in voices.values())
    return scores / exposure if exposure else 0.0


def robust_net(contributions: list[float]) -> float:
    """The sum without its strongest supporter and its strongest detractor: what the others say,
    so one voice has no say on either side, however strongly it acts."""
    if not contributions:
        return 0.0
    return sum(contributions) - max(0.0, max(contributions)) - min(0.0, min(contributions))


def contributions(voices: dict[str, Vote], base: float) -> list[float]:
    """Each voice's score beyond the baseline; the anonymous ones as at most ANONYMOUS_VOICES."""
    named = [v.score - base * v.exposure for key, v in voices.items() if not anonymous(key)]
    unnamed = [v.score - base * v.exposure for key, v in voices.items() if anonymous(key)]
    if len(unnamed) > ANONYMOUS_VOICES:
        scale = ANONYMOUS_VOICES / len(unnamed)
        unnamed = [c * scale for c in unnamed]
    return named + unnamed


def judge(impressions: Iterable[Impression], actions: Iterable[Action],
          examination: Examination | None = None) -> dict[tuple[str, str], Judgment]:
    """Every (query, resource) someone was shown: its value, net, voices and mean rank."""
    table = votes(impressions, actions, examination)
    base = baseline(table)
    out = {}
    for (query, resource_id), voices in table.items():
        parts = contributions(voices, base)
        robust = robust_net(parts)
        ranks = [r for v in voices.values() for r in v.ranks]
        out[(query, resource_id)] = Judgment(
            query, resource_id, value=round(robust / (abs(robust) + SHRINK), 6), net=round(sum(parts), 6),
            voices=len(voices), acted=sum(v.acted for v in voices.values()),
            exposure=round(sum(v.exposure for v in voices.values()), 6),
            rank=sum(ranks) / len(ranks) if ranks else 0.0)
    return out
