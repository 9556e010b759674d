"""bench/harness/measures.py: the paired measure of held-out queries, and the percentiles."""

from __future__ import annotations

import math

from bench.harness.measures import nearest_rank, paired_gain, percentiles


def test_paired_gain_says_how_sure_a_drop_is() -> None:
    before = {f"q{i}": 0.5 for i in range(40)}
    lower = {q: v - 0.03 + (0.01 if i % 2 else -0.01) for i, (q, v) in enumerate(before.items())}
    drop = paired_gain(before, lower)
    assert drop["queries"] == 40 and math.isclose(drop["mean"], -0.03)
    assert drop["ci95"][1] < 0 and drop["worse"] == 40 and drop["better"] == 0  # beyond the spread

    mixed = {q: v + (0.05 if i % 2 else -0.05) for i, (q, v) in enumerate(before.items())}
    tie = paired_gain(before, mixed)
    assert abs(tie["mean"]) < 1e-12 and tie["ci95"][0] < 0 < tie["ci95"][1]  # within it
    assert tie["worse"] == tie["better"] == 20
    assert paired_gain(before, {}) == {"queries": 0}


def test_nearest_rank_is_a_measured_value() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert nearest_rank(values, 0.5) == 3.0 and nearest_rank(values, 0.95) == 5.0
    assert nearest_rank(values, 0.0) == 1.0 and nearest_rank([], 0.5) is None


def test_percentiles_interpolate_round_and_count_as_asked() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.5, "p95": 95.05, "p99": 99.01, "n": 100}
    assert percentiles(values, (50,), digits=0, mean=True, count=False) == {"p50": 50.0, "mean": 50.0}
