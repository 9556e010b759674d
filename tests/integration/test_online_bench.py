"""`make online`'s harness end to end on a small BEIR collection built from the sample catalogue.

One seed, short streams, the tiny model: the point is the harness's contract (every key, the
real experiments decided by the services, the replays, the safety checks, the loop measured on
traffic), not the numbers, which `make online` measures on Cranfield.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_quality import beir_collection

KEYS = {"sensitivity", "impressions_to_decide_interleaving", "impressions_to_decide_ab",
        "false_promotion_rate", "experiments_judged", "false_promotions", "false_promotion_rate_resampled",
        "flipped_rejected_online", "flipped_outcomes", "rollback_happened",
        "rollback_impressions", "ndcg10_traffic_v0", "ndcg10_traffic_final", "traffic_gain_by_seed",
        "ndcg10_held_out_v0", "ndcg10_held_out_final", "held_out_gain_by_seed", "held_out_paired_by_seed",
        "latency", "people", "traffic_gain", "propensity_max_rel_error", "ratings_only",
        "settings", "pairs", "loops"}


@pytest.mark.slow
def test_online_harness_decides_replays_and_measures_the_traffic(tmp_path: Path, tiny_model: Path) -> None:
    dataset = beir_collection(tmp_path / "collection")
    out = tmp_path / "online.json"
    command = [sys.executable, "-m", "bench.online", "--dataset", str(dataset), "--seeds", "1",
               "--searches", "200", "--pair-searches", "300", "--latency-searches", "20",
               "--flipped-searches", "60", "--min-impressions", "30", "--max-impressions", "240",
               "--min-new", "40", "--min-new-interactions", "100", "--resamples", "3",
               "--resample-cap", "2000",
               "--base-model", str(tiny_model), "--embedding-model", str(tiny_model), "--max-length", "64",
               "--train-timeout", "300", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result.keys() >= KEYS
    (outcome,) = result["flipped_outcomes"]  # one seed: refused offline, or what users decided
    assert outcome.startswith(("refused offline", "retired by users", "not retired by users")), outcome
    assert result["flipped_rejected_online"] == (not outcome.startswith("not retired"))
    assert "left out 1 blank queries" in done.stderr  # the collection's blank query, not searched
    (pairs,) = result["pairs"]
    assert [p["pair"] for p in pairs["pairs"]] == ["bm25", "no_prf", "prf"]
    for pair in pairs["pairs"]:
        # Decided by users, or stopped once the pair's searches are played, then replayed from the log.
        assert pair["experiment"]["status"] == "ended", pair["experiment"]
        assert pair["logged_impressions"] >= 30
        assert pair["right_winner"] in ("champion", "challenger")
        for arm in ("resampled_interleaving", "resampled_ab", "resampled_ab_normal"):
            for floor in ("with_floor", "no_floor"):  # the product's minimum, and none: what each needs
                assert pair[arm][floor]["runs"] == 3, pair[arm]
        assert pair["resampled_interleaving"]["no_floor"]["median_impressions"] <= (
            pair["resampled_interleaving"]["with_floor"]["median_impressions"])
    counted = result["false_promotions"]["real"]
    assert counted["experiments"] == result["experiments_judged"] >= counted["challenger_worse"] >= (
        counted["false_promotions"])
    # A champion with BM25 backwards is far worse: users ask for version 0 back, the trainer obeys.
    assert pairs["safety"]["rollback_happened"], pairs["safety"]["rollback_experiment"]
    assert pairs["safety"]["rollback_impressions"] >= 30
    assert pairs["safety"]["flipped_run"]["status"] in ("challenger", "rejected")
    latency = result["latency"]
    assert latency["plain_p95_ms"] > 0 and math.isfinite(latency["p95_ratio"])
    # Who produced the figures: every parameter, and what they did per search.
    people = result["people"]
    assert people["click_model"] == "informational, position-based" and people["rate_share"] == 0.03
    assert people["clicks_per_search"] > 0.5 and 0 <= people["ratings_per_search"] < 0.2
    assert result["ratings_only"]["traffic_gain"] == result["ratings_only"]["traffic_gain_by_seed"][0]
    for pair in pairs["pairs"]:  # the same impressions replayed with ratings alone
        assert pair["ratings_only"]["resampled_interleaving"]["with_floor"]["runs"] == 3
    loop, rated = result["loops"]
    assert (loop["evidence"], rated["evidence"]) == ("all", "ratings")
    assert rated["clicks_per_search"] > 0.5  # the same people open results; the product is not told
    # Where people looked, estimated from the loop's traffic as a run would, against the truth.
    assert len(loop["click_model"]["propensity"]) == 10 and loop["click_model"]["searches"] > 0
    assert loop["propensity_error"]["max_rel_error"] == result["propensity_max_rel_error"]
    assert set(loop["traffic_queries"]).isdisjoint(loop["held_out_queries"])
    assert loop["searches"] == 200
    # Training fired from the aggregator's policy alone; a candidate the safety checks pass goes to
    # users, never promoted by the gate (on the tiny model's random dense scores, most are refused).
    assert loop["feedback_runs"], "the policy never asked for training"
    # (the last may still be running when the stream ends)
    assert {r["status"] for r in loop["feedback_runs"]} <= {"challenger", "rejected", "skipped", "running"}
    for key in ("ndcg10_traffic_v0", "ndcg10_traffic_final", "ndcg10_held_out_v0", "ndcg10_held_out_final"):
        assert 0.0 <= result[key] <= 1.0, key
    paired = loop["held_out_paired"]  # the per-query change on held-out queries, with its spread
    assert paired["queries"] == len(loop["held_out_queries"])
    change = result["ndcg10_held_out_final"] - result["ndcg10_held_out_v0"]
    assert math.isclose(paired["mean"], change, abs_tol=1e-9)
    assert paired["ci95"][0] <= paired["mean"] <= paired["ci95"][1]
