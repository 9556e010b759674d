"""The scale benchmark's smoke run: tiny sizes on the tiny model, every key `make bench` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, tiny_env


def test_scale_benchmark_runs_end_to_end_on_tiny_sizes(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--sizes", "150", "400", "--embed-up-to", "150",
         "--searches", "10", "--updates", "1", "--launcher", "200", "--launcher-watch-s", "1",
         "--throughput-texts", "16",
         "--base-model", str(tiny_model), "--out", str(out)],
        cwd=ROOT, env={**os.environ, **tiny_env(tiny_model)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["sizes"]) == {"150", "400"}
    embedded, generated = results["sizes"]["150"], results["sizes"]["400"]
    assert embedded["vectors"].startswith("embedded") and generated["vectors"].startswith("generated")
    assert embedded["embedding_in_service"]["encoded"] == 150
    assert embedded["cold_start"]["from_store"] == 150 and embedded["cold_start"]["encoded"] == 0
    assert generated["cold_start"]["from_store"] == 400 and generated["cold_start"]["encoded"] == 0
    for size in (embedded, generated):
        assert size["cold_start"]["ready_s"] > 0 and size["memory"]["rss_mb"] > 0
        assert size["search"]["client_ms"]["p95"] > 0 and size["search"]["client_ms"]["n"] == 10
        update = size["update"]
        for key in ("api_added_s", "api_changed_s", "store_write_s"):
            assert 0 < update[key]["p50"] < 60, key  # found, not timed out
        for share in ("1%", "50%"):
            filtered = size["filtered_search"][share]
            assert filtered["client_ms"]["p95"] > 0 and filtered["client_ms"]["n"] == 10, share
            assert 0 <= filtered["kept"] < 1, share
        assert size["filtered_search"]["1%"]["kept"] <= size["filtered_search"]["50%"]["kept"]
        for key in ("api_s", "store_write_s"):
            assert 0 < size["removal"][key]["p50"] < 60, key  # gone, not timed out
        assert size["after_updates"]["resources"] == size["resources"] + 2
    throughput = results["embedding_throughput"]["texts_per_s"]
    # The served runtime against plain encode; auto may time torch fastest for the tiny model.
    served = results["embedding_backend"]
    assert throughput["plain_encode"] > 0 and set(throughput) == {"plain_encode"} | (
        {served} if served != "torch" else set())
    launcher = results["launcher"]
    assert launcher["first_search_status"] == 200 and launcher["progress_lines"]
