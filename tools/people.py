"""Simulated people: what one person does with a list of results shown to them.

One definition for every simulated user: `python -m tools.cli traffic`, the sample feedback, and
the benchmarks and studies under `bench/`. A person's behaviour on a shown list is one object,
its parameters all in its fields (`parameters()` goes into a benchmark's results, so a figure
says who produced it). The judgments say what is relevant; the person decides what to do with
it: look or not, open or not, stay or not, rate or not, rightly or not.

- `Searchers` are people as studies of search logs describe them: they look down the list with
  a position bias or in a cascade, open what looks right (and some of what is not), stay on what
  is, come straight back from what is not, and rate on a few searches in a hundred. The default
  of `make online`.
- `People` rate without opening anything: generous raters who rate on every other search, the
  product's earlier simulated users, kept for comparison and for the tools that need ratings.

Both answer `act(shown, relevant, rng)` with `Act`s; `worth(acts, evidence)` is what the product
credits for them (`shared.evidence.outcomes`), with `evidence` "all" or "ratings" (opens ignored,
as a product that learns from ratings alone).
"""

from __future__ import annotations

import math
import random
from collections.abc import Container, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from shared.evidence.outcomes import OPEN_VALUE, QUICK_RETURN_S, SATISFIED_DWELL_S, open_value, rating_value

Rating = tuple[int, str]
"""(position in the shown list, from 0; "like" or "dislike")."""
EVIDENCE = ("all", "ratings")


@dataclass(frozen=True)
class Act:
    """What one person did with one shown result: opened it and stayed `dwell_s` seconds (None: not
    opened), rated it (`label`), or both. `position` counts from 0."""

    position: int
    dwell_s: float | None = None
    label: str | None = None


def worth(acts: Sequence[Act], evidence: str = "all") -> list[tuple[int, float]]:
    """(position, value) of each act as the product credits it; `evidence` "ratings": opens ignored."""
    out = []
    for act in acts:
        value = rating_value(act.label)
        if evidence == "all" and act.dwell_s is not None:
            value += open_value(act.dwell_s)
        if value or act.label is not None:
            out.append((act.position, value))
    return out


@dataclass(frozen=True)
class People:
    """People who look less far down the list, sometimes rate wrong, often rate nothing.

    On each shown list, in this order: with probability `silent` the person rates nothing; else
    each result is examined with probability 1/rank^`bias`, an examined one is left unrated with
    probability `skip`, and the others are rated against the judgments, wrongly with probability
    `noise`. `flipped` people rate backwards. A part set to None is not in the model at all: it
    tosses no coin, so the random stream is what it was for the people who never had that part
    (the traffic command's and the sample feedback's, who read every result and never err).
    """

    bias: float | None = 0.7
    noise: float | None = 0.05
    skip: float = 0.1
    silent: float | None = 0.5
    flipped: bool = False

    @classmethod
    def attentive(cls, skip: float) -> People:
        """Read every result, rate as the judgments say, leave `skip` of them unrated, always
        rate something: the stand-in of `tools.cli traffic` and `tools.sample_feedback`."""
        return cls(bias=None, noise=None, skip=skip, silent=None)

    def parameters(self) -> dict[str, float | bool | None]:
        """Every parameter, for a results file."""
        return asdict(self)

    def rate(self, shown: Sequence[str], relevant: Container[str], rng: random.Random) -> list[Rating]:
        """What this person rates on `shown` (resource ids, top first), each coin from `rng`."""
        if self.silent is not None and rng.random() < self.silent:
            return []
        out = []
        for i, resource_id in enumerate(shown):
            if self.bias is not None and rng.random() > 1.0 / (i + 1) ** self.bias:
                continue
            if rng.random() < self.skip:
                continue
            wrong = self.noise is not None and rng.random() < self.noise
            like = (resource_id in relevant) != wrong
            out.append((i, "like" if like != self.flipped else "dislike"))
        return out

    name = "generous raters"

    def act(self, shown: Sequence[str], relevant: Container[str], rng: random.Random) -> list[Act]:
        """`rate`, as acts: these people rate without opening."""
        return [Act(position, None, label) for position, label in self.rate(shown, relevant, rng)]

    def expected_value(self, shown: Sequence[str], relevant: Container[str], evidence: str = "all") -> float:
        """The credit a search showing `shown` earns on average from these people (likes less
        dislikes, the judgments read with their attention): what an A/B test on it estimates."""
        share = self.rated_share(len(shown))
        total = 0.0
        for i, resource_id in enumerate(shown):
            like = float(self.like_chance(resource_id in relevant))
            total += float(share[i]) * (2 * like - 1)
        return total

    def rated_share(self, k: int) -> np.ndarray:
        """The chance that each of the top `k` positions is rated at all (silence, examination, skip)."""
        return (1 - (self.silent or 0.0)) * (1 - self.skip) / np.arange(1, k + 1) ** (self.bias or 0.0)

    def like_chance(self, relevant: np.ndarray | bool) -> np.ndarray | float:
        """The chance that a rated result is liked, for whether it is relevant."""
        noise = self.noise or 0.0
        right = np.logical_xor(relevant, self.flipped)
        return np.where(right, 1 - noise, noise)

    def expected_likes(self, shown: Sequence[str], relevant: Container[str]) -> float:
        """Likes a search showing `shown` gets from these people on average: the judgments read
        with their attention, what an A/B test on likes estimates."""
        share = self.rated_share(len(shown))
        total = 0.0
        for i, resource_id in enumerate(shown):
            total += float(share[i]) * float(self.like_chance(resource_id in relevant))
        return total

    def rate_many(self, relevant: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`rate` for many lists at once: likes and dislikes (bool arrays shaped like `relevant`,
        one row a shown list) drawn from a numpy generator, for simulations too large to loop."""
        n, k = relevant.shape
        rated = np.ones((n, k), dtype=bool)
        if self.silent is not None:
            rated &= (rng.random(n) >= self.silent)[:, None]
        if self.bias is not None:
            rated &= rng.random((n, k)) <= 1.0 / np.arange(1, k + 1) ** self.bias
        rated &= rng.random((n, k)) >= self.skip
        right = rng.random((n, k)) >= self.noise if self.noise is not None else np.ones((n, k), dtype=bool)
        like = rated & ((relevant != self.flipped) == right)
        return like, rated & ~like


def shares_most_words(query: str, text: str) -> bool:
    """Most of the query's words (longer than 3 letters) appear in `text`: a judgment without
    judgments, for a catalogue that has none."""
    words = {w for w in query.lower().split() if len(w) > 3}
    text = text.lower()
    return bool(words) and sum(w in text for w in words) / len(words) >= 0.5


def like_rule(query: str, result: dict) -> bool:
    """A simple stand-in for a person's judgment: like results that share most of the query's words."""
    return shares_most_words(query, f"{result['title']} {result.get('description', '')} "
                                    f"{result.get('subject', '')}")


def _lognormal_above(threshold: float, median: float, sigma: float) -> float:
    """P(X >= threshold) for a log-normal X of this median and spread."""
    return 0.5 * math.erfc((math.log(threshold) - math.log(median)) / (sigma * math.sqrt(2)))


@dataclass(frozen=True)
class Searchers:
    """People who look down the list, open what looks right, stay on what is, and seldom rate.

    `examination`: "position" (the position-based model: rank r is examined with probability
    1/r^`decay`, whatever else happens) or "cascade" (results are examined top down until the
    person stops, after an open, with probability `stop` by relevance). An examined result is
    opened with probability `click` (non-relevant, relevant), the click models of Hofmann,
    Whiteson and de Rijke 2011 ("A probabilistic method for inferring preferences from clicks"):
    perfect (0.0, 1.0) stop (0.0, 0.0); navigational (0.05, 0.95) stop (0.2, 0.9); informational
    (0.4, 0.9) stop (0.1, 0.5). An opened result keeps the person `dwell` seconds, log-normal with
    medians `dwell_median_s` (non-relevant, relevant) and spread `dwell_sigma`: with the defaults
    most relevant opens last 30 s or more (76 %) and most non-relevant ones under 10 s (59 %), the
    split dwell studies report between satisfied and unsatisfied clicks (Fox et al. 2005; Kim et
    al. 2014). On a share `rate_share` of searches the person rates, and then rates each result
    they opened with probability 1 - `rate_skip`, wrongly with probability `noise`: explicit
    ratings on about 3 % of searches, given on results the person opened. `flipped` people act
    backwards: they open, stay on and like what is not relevant.
    """

    name: str = "informational, position-based"
    examination: str = "position"
    decay: float = 1.0
    click: tuple[float, float] = (0.4, 0.9)
    stop: tuple[float, float] = (0.0, 0.0)
    dwell_median_s: tuple[float, float] = (8.0, 60.0)
    dwell_sigma: float = 1.0
    rate_share: float = 0.03
    rate_skip: float = 0.3
    noise: float = 0.05
    flipped: bool = False

    @classmethod
    def cascade(cls, kind: str, **fields: object) -> Searchers:
        """Hofmann et al.'s cascade users: "perfect", "navigational" or "informational"."""
        click, stop = {"perfect": ((0.0, 1.0), (0.0, 0.0)), "navigational": ((0.05, 0.95), (0.2, 0.9)),
                       "informational": ((0.4, 0.9), (0.1, 0.5))}[kind]
        return cls(name=f"{kind}, cascade", examination="cascade", click=click, stop=stop,
                   **fields)  # type: ignore[arg-type]

    def parameters(self) -> dict[str, object]:
        return asdict(self)

    def act(self, shown: Sequence[str], relevant: Container[str], rng: random.Random) -> list[Act]:
        """What this person does on `shown` (resource ids, top first), each coin from `rng`."""
        rates = rng.random() < self.rate_share
        out = []
        for i, resource_id in enumerate(shown):
            good = (resource_id in relevant) != self.flipped
            if self.examination == "position" and rng.random() > 1.0 / (i + 1) ** self.decay:
                continue
            if rng.random() >= self.click[good]:
                continue
            dwell = self.dwell_median_s[good] * math.exp(self.dwell_sigma * rng.gauss(0.0, 1.0))
            label = None
            if rates and rng.random() >= self.rate_skip:
                right = rng.random() >= self.noise
                label = "like" if good == right else "dislike"
            out.append(Act(i, round(dwell, 1), label))
            if self.examination == "cascade" and rng.random() < self.stop[good]:
                break
        return out

    def examined(self, shown: Sequence[str], relevant: Container[str]) -> list[float]:
        """The chance that each shown result is examined (a cascade's depends on what is above)."""
        out, reach = [], 1.0
        for i, resource_id in enumerate(shown):
            if self.examination == "position":
                out.append(1.0 / (i + 1) ** self.decay)
                continue
            good = (resource_id in relevant) != self.flipped
            out.append(reach)
            reach *= 1.0 - self.click[good] * self.stop[good]
        return out

    def open_worth(self, good: bool) -> float:
        """What an open of a result is worth on average, from its dwell's distribution."""
        median = self.dwell_median_s[good]
        satisfied = _lognormal_above(SATISFIED_DWELL_S, median, self.dwell_sigma)
        quick = 1.0 - _lognormal_above(QUICK_RETURN_S, median, self.dwell_sigma)
        return (satisfied * OPEN_VALUE["satisfied"] + quick * OPEN_VALUE["quick"]
                + (1.0 - satisfied - quick) * OPEN_VALUE["neutral"])

    def expected_value(self, shown: Sequence[str], relevant: Container[str], evidence: str = "all") -> float:
        """The credit a search showing `shown` earns on average from these people: each result's
        chance of being examined and opened times what its open and its rating are worth."""
        rating = self.rate_share * (1 - self.rate_skip) * (1 - 2 * self.noise)
        total = 0.0
        for resource_id, seen in zip(shown, self.examined(shown, relevant), strict=True):
            good = (resource_id in relevant) != self.flipped
            value = rating if good else -rating
            if evidence == "all":
                value += self.open_worth(good)
            total += seen * self.click[good] * value
        return total


PEOPLE = {"informational": Searchers(), "cascade-informational": Searchers.cascade("informational"),
          "cascade-navigational": Searchers.cascade("navigational"),
          "cascade-perfect": Searchers.cascade("perfect"), "generous-raters": People()}
"""The simulated people `make online` can play (`--people`)."""
