"""Where people look: the chance that a result is examined at each rank, estimated from traffic.

People open what is high on the list whether or not it is better (position bias), so clicks say
"relevant" only once divided by how likely the result was to be seen. The position-based model
(Craswell et al. 2008; Chuklin, Markov and de Rijke 2015) says a result d shown at rank k for query
q is opened with probability theta_k * alpha_qd: examined at rank k, then found attractive.

The product's traffic shows the same (query, resource) at several ranks: interleaving draws each
list anew, versions rank differently, and outside experiments a small share of searches swap two
neighbours (`EDURANKER_EXPLORE_SHARE`). That is intervention harvesting (Agarwal et al. 2019,
"Estimating position bias without intrusive interventions"): the (query, resource) pairs seen at
several ranks are strata in which only the rank differs. Given how many opens a stratum got, where
they fell among its ranks depends on the theta_k alone (its alpha drops out of that conditional
likelihood, which the model's own maximum likelihood, one alpha per stratum, cannot avoid: the
Neyman-Scott bias), so the log-propensities are its maximum (`_conditional`), rank 1 fixed at 1,
with their variances. Each rank is then pulled toward the power law (1/k)^eta, eta from the same
likelihood, as far as its own estimate is uncertain (empirical Bayes, `_smoothed`). Which ranks can
be estimated at all is decided pair by pair: a rank must be linked to rank 1 through pairs of ranks
seen together in `MIN_STRATA` strata, with opens at both (their Mantel-Haenszel ratios, with the
Greenland-Robins variances, are the fallback where the likelihood is singular). Intervals come
from resampling whole searches (bootstrap).

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
TOP_PAIR_SHARE = 0.5
"""Of the explored searches, the share that swap the first two results. Opens are most numerous
at the top and ranks 1 and 2 are the curve's steepest step, so a swap there tells the most about
where people look. Replaying the searches of two `make online` runs (`bench/studies/exploration.py`),
at a 10 % share the worst rank was within 10 % of the truth in 53 and 58 % of replays, against 42
and 46 % with uniform swaps; it costs people more on a ranker whose first result is the better
(0.0004-0.0005 nDCG@10 a search at worst, against 0.00015). The other half, uniform, keeps every
rank linked to rank 1 where no experiment runs."""
T = TypeVar("T")


def explored(inference_id: str, share: float, shown: int, top: float = TOP_PAIR_SHARE) -> int | None:
    """Whether a search outside experiments swaps two neighbours, and which: the 1-based rank of
    the upper one (a hash of the inference id, so the log replays it). Swapping neighbours is the
    cheapest intervention (Joachims et al. 2017): the list is the ranker's but for one pair. A share
    `top` of the swaps take the first two results, the others a pair drawn uniformly."""
    if share <= 0 or shown < 2:
        return None
    digest = hashlib.sha256(f"explore:{inference_id}".encode()).digest()
    if int.from_bytes(digest[:8], "big") / 2**64 >= share:
        return None
    if int.from_bytes(digest[16:24], "big") / 2**64 < top:
        return 1
    return 1 + int.from_bytes(digest[8:16], "big") % (min(shown, RANKS) - 1)


def swap_chances(share: float, shown: int, top: float = TOP_PAIR_SHARE) -> dict[int, float]:
    """The chance that `explored` swaps each pair (the upper one's 1-based rank) of a list of
    `shown` results: what a swap costs people on average is each pair's cost weighed by these."""
    pairs = min(shown, RANKS) - 1
    if share <= 0 or pairs < 1:
        return {}
    return {at: share * (top * (at == 1) + (1 - top) / pairs) for at in range(1, pairs + 1)}


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
    ranker: str = ""
    """What ordered the list (a version, or an experiment's interleaving): a (query, resource) is
    compared with itself only under one ranker (`shared.ml.training.dataset.estimate_examination`)."""


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
    """Per search row: stratum id (query, ranker, resource), rank index, opened; only the first
    `ranks` results."""
    strata: dict[tuple[str, str, str], int] = {}
    ids, positions, opened = [], [], []
    for search in searches:
        for k, resource_id in enumerate(search.shown[:ranks]):
            ids.append(strata.setdefault((search.query, search.ranker, resource_id), len(strata)))
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
        fitted = _free(shown, clicks, keep)
        if fitted is None:  # the ratios' weighted least squares, and their variances
            root = np.sqrt(np.asarray(weights))
            weighted = np.asarray(rows)[:, keep] * root[:, None]
            free, *_ = np.linalg.lstsq(weighted, np.asarray(values) * root, rcond=None)
            variance = np.diag(np.linalg.pinv(weighted.T @ weighted))
        else:
            free, variance = fitted
        log_p[keep] = _smoothed(free, variance, keep, _exponent(shown, clicks))
        log_p[0] = 0.0
    return log_p, connected, used


def _conditional(shown: np.ndarray, clicks: np.ndarray, columns: np.ndarray, design: np.ndarray,
                 start: np.ndarray, iterations: int = 50) -> tuple[np.ndarray, np.ndarray] | None:
    """Parameters `theta` of log-examination `design @ theta` at the ranks in `columns`, and their
    variances, from where each (query, resource)'s opens fell among the ranks it was shown at, given
    how many there were.

    Opens taken as Poisson counts of mean alpha * theta_k: conditioned on each stratum's total,
    alpha drops out (no Neyman-Scott bias), and every stratum seen at two ranks or more informs
    every rank at once, where the Mantel-Haenszel ratios take the ranks two by two. Its variances
    (the inverse Fisher information) are a Poisson's, a little wider than opens of 0 or 1 have:
    the ratios' own understated theirs about twofold (on replayed traffic, ranks strayed from a
    true power law by 1.7 to 2.3 of their variances), which kept noise in the estimate. None where
    the information is singular. Concave in theta: Newton's method, steps capped."""
    counts, opens = shown[:, columns], clicks[:, columns]
    informative = (counts > 0).sum(axis=1) >= 2
    counts, opens = counts[informative], opens[informative]
    totals, observed = opens.sum(axis=1), opens.sum(axis=0)
    if totals.sum() <= 0:
        return None
    theta = start.astype(float).copy()
    for _ in range(iterations):
        beta = design @ theta
        mass = counts * np.exp(beta - beta.max())
        share = mass / mass.sum(axis=1, keepdims=True)
        gradient = design.T @ (observed - totals @ share)
        information = design.T @ (np.diag(totals @ share) - (share * totals[:, None]).T @ share) @ design
        try:
            step = np.clip(np.linalg.solve(information, gradient), -2.0, 2.0)
        except np.linalg.LinAlgError:
            return None
        theta += step
        if not np.all(np.isfinite(theta)):
            return None
        if np.abs(step).max() < 1e-9:
            break
    try:
        variance = np.diag(np.linalg.inv(information))
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(variance)) or np.any(variance <= 0):
        return None
    return theta, variance


def _free(shown: np.ndarray, clicks: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Each rank in `keep` its own log-examination (rank 1 = 0), by `_conditional`."""
    columns = np.concatenate(([0], keep))
    design = np.vstack((np.zeros(len(keep)), np.eye(len(keep))))
    return _conditional(shown, clicks, columns, design, -np.log(keep + 1.0))


def _exponent(shown: np.ndarray, clicks: np.ndarray) -> float | None:
    """The power law's exponent eta, theta_k = (1/k)^eta, from every open at once by `_conditional`:
    one parameter from all the strata (`bench/studies/click_model.py` measures the estimate it
    anchors)."""
    ranks = np.arange(shown.shape[1])
    fitted = _conditional(shown, clicks, ranks, -np.log(ranks + 1.0)[:, None], np.ones(1), iterations=30)
    return None if fitted is None else float(np.clip(fitted[0][0], 0.05, 4.0))


def _smoothed(free: np.ndarray, variance: np.ndarray, keep: np.ndarray, eta: float | None) -> np.ndarray:
    """Each rank's free estimate pulled toward the power law (1/k)^eta, as far as its own variance
    exceeds the spread of the ranks around that law (empirical Bayes). `eta`: from `_exponent`;
    where it has none, fitted to the free estimates.

    The power law is the family studies of position bias fit (Joachims, Swaminathan and Schnabel
    2017); where the ranks stray from it by more than their noise (another curve) their own
    estimates stand, where not (or where they are uncertain: deep ranks, little traffic) the
    estimate leans on the law, which all the opens fit at once.

    The spread is DerSimonian and Laird's (1986) estimate, each rank weighed by its precision: a
    deep rank seen in few strata, far from the law and far from sure, says little about how far
    the curve strays. Weighing the ranks alike let such a rank set the spread and keep its own
    estimate (versions learning on swaps alone: rank 10 off by 394 % on one seed of 10, 37 % at
    worst now, `bench/studies/click_model.py`)."""
    slope = -np.log(keep + 1.0)
    if eta is None:
        eta = float((slope / variance) @ free / max(float((slope / variance) @ slope), 1e-12))
    law = eta * slope
    weight = 1.0 / variance
    stray = float(weight @ (free - law) ** 2)
    scale = float(weight.sum() - (weight**2).sum() / weight.sum())
    spread = max(0.0, (stray - (len(free) - 1)) / max(scale, 1e-12))
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
