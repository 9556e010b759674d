"""The training benchmark's quick mode: the script runs end to end and writes every key `make bench` needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_quick_training_benchmark_writes_the_expected_keys(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    done = subprocess.run([sys.executable, "-m", "bench.train", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for key in ("seconds_100", "seconds_500", "seconds_1000", "peak_rss_mb"):
        assert results[key] > 0, key
    assert results["model"] and results["quick"] is True and results["dataset"] in ("cranfield",
                                                                                     "sample_catalogue")
    settings = results["settings"]
    assert (settings["epochs"], settings["batch_size"], settings["max_length"]) == (3, 16, 128)
    assert [run["pairs"] for run in results["runs"]] == [100, 500, 1000]
    assert all(run["epochs_run"] == 3 and run["validation_pairs"] > 0 for run in results["runs"])
    assert set(results["runs"][0]["validation_after"]) == {"auc", "ndcg@10"}
