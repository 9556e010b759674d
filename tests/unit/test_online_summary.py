"""bench/online_summary.py's paired measure of held-out queries: the change and its spread."""

from __future__ import annotations

import math

from bench.online_summary import paired_gain


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
