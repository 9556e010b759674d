"""`python -m bench.studies.memory` on a small BEIR collection: the study runs, and what it reports holds.

The tiny model's numbers mean nothing; the contract does: each variant's held-out and rated
changes, and a version whose neighbours weigh 0 leaves every query nobody rated as version 0
ranks it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared.ml.training.run import NEIGHBOUR_WEIGHTS
from tests.conftest import ROOT
from tests.integration.test_quality import beir_collection


def test_memory_study_reports_each_variant_and_weight_zero_leaves_unrated_queries_alone(
        tmp_path: Path, tiny_model: Path) -> None:
    dataset = beir_collection(tmp_path / "collection")
    out = tmp_path / "study.json"
    env = {**os.environ, "EDURANKER_BASE_MODEL": str(tiny_model),
           "EDURANKER_EMBEDDING_MODEL": str(tiny_model), "EDURANKER_MAX_LENGTH": "64",
           "EDURANKER_MODEL_DIR": str(tmp_path / "models")}
    command = [sys.executable, "-m", "bench.studies.memory", "--dataset", str(dataset),
               "--seeds", "1", "--searches", "300", "--memory-weights", "4", "--neighbours", "0", "2",
               "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["variant"] for r in runs] == ["fitted", "n=0.0", "n=2.0"]
    assert runs[0]["neighbours"] in NEIGHBOUR_WEIGHTS and runs[0]["pairs"] > 0
    held = {r["variant"]: r["held_out"] for r in runs}
    assert held["n=0.0"]["worse"] == held["n=0.0"]["better"] == 0 and held["n=0.0"]["mean"] == 0.0
    # Users' likes follow the judgments here: remembered at weight 4, the rated queries gain.
    assert runs[1]["rated"]["mean"] > 0 and runs[1]["rated"]["better"] > 0
