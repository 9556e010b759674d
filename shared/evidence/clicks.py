"""Where people look: the chance that a result is examined at each rank, estimated from traffic.

People open what is high on the list whether or not it is better (position bias), so clicks say
"relevant" only once divided by how likely the result was to be seen. The position-based model
(Craswell et al. 2008; Chuklin, Markov and de Rijke 2015) says a result d shown at rank k for query
q is opened with probability theta_k * alpha_qd: examined at rank k, then found attractive.

The product's traffic shows the same (query, resource) at several ranks: interleaving draws each
list anew, versions rank differently, and outside experiments a small share of searches swap two
neighbours (`EDURANKER_EXPLORE_SHARE`). That is intervention harvesting (Agarwal et al. 2019,
"Estimating position bias without intrusive interventions"): for two ranks a and b, the
(query, resource) pairs seen at both are strata in which only the rank differs, so the ratio of
their open rates at a and b estimates theta_a / theta_b. Each pair of ranks gets the
Mantel-Haenszel estimate of that ratio over its strata (consistent however sparse the strata,
unlike the maximum likelihood of the model, which fits one alpha per (query, resource) and is
biased when each is seen a few times: the Neyman-Scott problem), with the Greenland-Robins
variance of its logarithm; the log-propensities are the weighted least-squares fit of all these
ratios, rank 1 fixed at 1, each rank then pulled toward the power law (1/k)^eta that the same
ratios fit as far as its own estimate is uncertain (empirical Bayes). Intervals come from
resampling whole searches (bootstrap).

Pure, no I/O: the trainer estimates it from the logged inferences and their opens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

RANKS = 10
"""Ranks the model estimates (a search page's first screen); deeper ranks take rank 10's value."""
MIN_STRATA = 3
"""A pair of ranks informs the fit once this many (query, resource) pairs were seen at both."""
BOOTSTRAP = 40
T = TypeVar("T")


def explored(inference_id: str, share: float, shown: int) -> int | None:
    """Whether a search outside experiments swaps two neighbours, and which: the 1-based rank of
    the upper one (a hash of the inference id, so the log replays it). Swapping neighbours is the
    cheapest intervention (Joachims et al. 2017): the list is the ranker's but for one pair."""
    if share <= 0 or shown < 2:
        return None
    digest = hashlib.sha256(f"explore:{inference_id}".encode()).digest()
    if int.from_bytes(digest[:8], "big") / 2**64 >= share:
        return None
    return 1 + int.from_bytes(digest[8:16], "big") % (min(shown, RANKS) - 1)


def swapped(order: list[T], at: int | None) -> list[T]:
    """`order` with ranks `at` and `at + 1` swapped (None: as it is)."""
    if at is None:
        return order
    out = list(order)
    out[at - 1], out[at] = out[at], out[at - 1]
    return out


def prior(ranks: int = RANKS) -> np.ndarray:
    """Examination before any traffic: 1/rank, the shape eye-tracking and click studies report for
    the first screen (Joachims et al. 2005) and the default of simulated people (bench/harness)."""
    return 1.0 / np.arange(1, ranks + 1)


@dataclass(frozen=True)
class Search:
    """One logged search as the click model reads it: the query (its key), the resources shown,
    best first, and which of them were opened."""

    query: str
    shown: tuple[str, ...]
    opened: frozenset[str]


@dataclass(frozen=True)
class Examination:
    """Examination by rank, relative to rank 1 (index 0 is rank 1), with a 95 % interval.

    `source`: `estimated` from traffic, or `prior` (1/rank) where the traffic does not connect a
    rank to rank 1 yet (too few results seen at both). `searches` and `opens` say how much traffic
    the estimate stands on; `strata` how many (query, resource, pair of ranks) informed it."""

    propensity: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    source: tuple[Literal["estimated", "prior"], ...]
    searches: int = 0
    opens: int = 0
    strata: int = 0

    def at(self, rank: int) -> float:
        """Examination at a 1-based rank; ranks past the model's take its last value."""
        return self.propensity[min(rank, len(self.propensity)) - 1]

    def as_dict(self) -> dict[str, object]:
        return {"propensity": [round(p, 4) for p in self.propensity], "low": [round(p, 4) for p in self.low],
                "high": [round(p, 4) for p in self.high], "source": list(self.source),
                "searches": self.searches, "opens": self.opens, "strata": self.strata}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Examination:
        return cls(tuple(data["propensity"]), tuple(data["low"]), tuple(data["high"]),  # type: ignore[arg-type]
                   tuple(data["source"]), int(data.get("searches", 0)), int(data.get("opens", 0)),  # type: ignore[arg-type]
                   int(data.get("strata", 0)))  # type: ignore[arg-type]


def prior_examination(ranks: int = RANKS) -> Examination:
    p = tuple(float(x) for x in prior(ranks))
    return Examination(p, p, p, ("prior",) * ranks)


def _counts(searches: Sequence[Search], ranks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per search row: stratum id, rank index, opened; only the first `ranks` results."""
    strata: dict[tuple[str, str], int] = {}
    ids, positions, opened = [], [], []
    for search in searches:
        for k, resource_id in enumerate(search.shown[:ranks]):
            ids.append(strata.setdefault((search.query, resource_id), len(strata)))
            positions.append(k)
            opened.append(resource_id in search.opened)
    return np.asarray(ids, dtype=np.int64), np.asarray(positions, dtype=np.int64), np.asarray(opened, float)


def _fit(ids: np.ndarray, positions: np.ndarray, opened: np.ndarray, ranks: int,
         weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Log-propensities (rank 1 = 0), whether each rank is connected to rank 1, strata used.
    `weight`: how many times each row counts (a bootstrap's resampling)."""
    size = int(ids.max()) + 1 if len(ids) else 0
    weight = np.ones(len(ids)) if weight is None else weight
    shown = np.zeros((size, ranks))
    clicks = np.zeros((size, ranks))
    np.add.at(shown, (ids, positions), weight)
    np.add.at(clicks, (ids, positions), opened * weight)
    rows, values, weights, used = [], [], [], 0
    for a in range(ranks):
        for b in range(a + 1, ranks):
            both = (shown[:, a] > 0) & (shown[:, b] > 0)
            if both.sum() < MIN_STRATA:
                continue
            na, nb, ca, cb = shown[both, a], shown[both, b], clicks[both, a], clicks[both, b]
            total = na + nb
            num, den = float((ca * nb / total).sum()), float((cb * na / total).sum())
            if num <= 0 or den <= 0:
                continue
            spread = float(((na * nb * (ca + cb) - ca * cb * total) / total**2).sum())
            row = np.zeros(ranks)
            row[a], row[b] = 1.0, -1.0
            rows.append(row)
            values.append(np.log(num / den))
            weights.append(1.0 / max(spread / (num * den), 1e-6))
            used += int(both.sum())
    connected = _connected(rows, ranks)
    log_p = np.log(prior(ranks))
    if rows and connected[1:].any():
        keep = np.flatnonzero(connected[1:]) + 1
        design, values_, root = np.asarray(rows)[:, keep], np.asarray(values), np.sqrt(np.asarray(weights))
        solution, *_ = np.linalg.lstsq(design * root[:, None], values_ * root, rcond=None)
        log_p[keep] = _smoothed(solution, design, values_, root, keep)
        log_p[0] = 0.0
    return log_p, connected, used


def _smoothed(free: np.ndarray, design: np.ndarray, values: np.ndarray, root: np.ndarray,
              keep: np.ndarray) -> np.ndarray:
    """Each rank's free estimate pulled toward the power law (1/k)^eta fitted to the same ratios,
    as far as its own variance exceeds the spread of the ranks around that law (empirical Bayes).

    The power law is the family studies of position bias fit (Joachims, Swaminathan and Schnabel
    2017); where a rank's ratios are plentiful its own estimate stands, where they are few (deep
    ranks, little traffic) it leans on what the other ranks say of the curve's slope."""
    weighted = design * root[:, None]
    try:
        variance = np.diag(np.linalg.inv(weighted.T @ weighted))
    except np.linalg.LinAlgError:
        return free
    slope = design @ -np.log(keep + 1.0)  # each ratio's log under (1/k)^eta, per unit of eta
    eta = float(((slope * root) @ (values * root)) / max(float((slope * root) @ (slope * root)), 1e-12))
    law = -eta * np.log(keep + 1.0)
    spread = max(0.0, float(np.mean((free - law) ** 2 - variance)))
    return law + spread / (spread + variance) * (free - law)


def _connected(rows: list[np.ndarray], ranks: int) -> np.ndarray:
    """Ranks linked to rank 1 through informative pairs (only those can be estimated)."""
    links = {k: set() for k in range(ranks)}
    for row in rows:
        a, b = int(np.argmax(row)), int(np.argmin(row))
        links[a].add(b)
        links[b].add(a)
    seen, todo = {0}, [0]
    while todo:
        for other in links[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return np.array([k in seen for k in range(ranks)])


def estimate(searches: Sequence[Search], ranks: int = RANKS, bootstrap: int = BOOTSTRAP,
             seed: int = 0) -> Examination:
    """Examination by rank from logged searches and their opens, with bootstrap intervals."""
    if not searches:
        return prior_examination(ranks)
    ids, positions, opened = _counts(searches, ranks)
    log_p, connected, used = _fit(ids, positions, opened, ranks)
    propensity = np.minimum(np.exp(log_p), 1.0)
    low, high = propensity.copy(), propensity.copy()
    if bootstrap and connected[1:].any():
        # Poisson bootstrap: each search counts a Poisson(1) number of times, all its rows alike.
        rng = np.random.default_rng(seed)
        search_of = np.repeat(np.arange(len(searches)), [min(len(s.shown), ranks) for s in searches])
        draws = [np.minimum(np.exp(_fit(ids, positions, opened, ranks,
                                        rng.poisson(1.0, len(searches))[search_of].astype(float))[0]), 1.0)
                 for _ in range(bootstrap)]
        low, high = np.percentile(draws, 2.5, axis=0), np.percentile(draws, 97.5, axis=0)
    low, high = np.where(connected, low, propensity), np.where(connected, high, propensity)
    return Examination(tuple(float(x) for x in propensity), tuple(float(x) for x in low),
                       tuple(float(x) for x in high),
                       tuple("estimated" if c else "prior" for c in connected),
                       searches=len(searches), opens=int(opened.sum()), strata=used)
