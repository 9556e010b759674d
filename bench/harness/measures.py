"""What the benchmarks compute from what they measured: nDCG@10 of a shown list, percentiles of
latencies, the spread over seeds, the per-query change between two versions."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

import numpy as np

from shared.ml.training.evaluate import ndcg_at


def ndcg10(shown: Sequence[str], judged: dict[str, int]) -> float:
    """nDCG@10 of a list of resource ids under a query's judgments (unjudged: not relevant)."""
    return ndcg_at([float(judged.get(r, 0)) for r in shown], [float(g) for g in judged.values()], 10)


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The `q` quantile as one of the values (the one at rank q (n - 1), rounded); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99), digits: int = 2,
                mean: bool = False, count: bool = True) -> dict[str, float]:
    """`p50`, `p95`, ... (numpy's interpolated percentiles), rounded; with the mean and the count
    of values when asked."""
    array = np.asarray(values)
    out: dict[str, float] = {f"p{p}": round(float(np.percentile(array, p)), digits) for p in points}
    if mean:
        out["mean"] = round(float(array.mean()), digits)
    if count:
        out["n"] = len(values)
    return out


def spread(values: list[float]) -> dict[str, float]:
    """Mean, extremes and standard deviation over seeds."""
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired_gain(before: dict[str, float], after: dict[str, float], resamples: int = 5000) -> dict:
    """The mean per-query change and its spread: standard error and a 95 % bootstrap interval
    over queries (seeded), so that "worse than version 0 beyond the spread" can be read off."""
    diffs = [after[q] - before[q] for q in sorted(after)]
    if not diffs:
        return {"queries": 0}
    rng = random.Random(0)
    means = sorted(statistics.mean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return {"queries": len(diffs), "mean": statistics.mean(diffs),
            "standard_error": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None,
            "ci95": [means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]],
            "worse": sum(d < -1e-9 for d in diffs), "better": sum(d > 1e-9 for d in diffs)}


def examination_error(estimated: dict, truth: Sequence[float]) -> dict:
    """An estimated examination curve (`Examination.as_dict()`) against the true one: each rank's
    relative error, the largest, how many ranks' 95 % intervals hold the truth, and how many ranks
    were estimated rather than left at the prior. Bounds are read to the 4 decimals `as_dict` keeps."""
    errors = [abs(p / t - 1) for p, t in zip(estimated["propensity"], truth, strict=True)]
    held = [lo - 5e-5 <= t <= hi + 5e-5
            for lo, t, hi in zip(estimated["low"], truth, estimated["high"], strict=True)]
    return {"max_rel_error": max(errors), "by_rank": [round(e, 4) for e in errors],
            "intervals_hold": sum(held), "held_by_rank": held,
            "estimated_ranks": estimated["source"].count("estimated")}
