"""`make eval`'s harness end to end on a small BEIR collection built from the sample catalogue.

Two fresh stacks (normal and flipped users) on the tiny model: the point is the harness's
contract (split written out, every key, the plot, a collection used as it is), not the numbers,
which `make eval` measures on Cranfield.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE_CATALOGUE

KEYS = {"refused_queries", "ndcg10_bm25",
         "ndcg10_base", "ndcg10_v0", "ndcg10_final", "ndcg10_seen_v0", "ndcg10_seen_final",
        "rounds", "feedback_used", "gate_rejected_flipped", "never_below_bm25", "spread", "runs", "settings"}


def query_texts(subjects: list[str], rows: list[dict]) -> list[str]:
    """One query per subject; the first a pasted paragraph longer than any search box (real
    collections have such queries), the last one blank (the reranker refuses it)."""
    texts = [f"{subject} course" for subject in subjects]
    paragraph = " ".join(r["description"] for r in rows if r["subject"] == subjects[0])
    texts[0] = (paragraph + " ") * (1 + 3000 // max(1, len(paragraph)))
    texts[-1] = "   "
    return texts


def beir_collection(folder: Path) -> Path:
    """Queries are subjects; a resource is relevant to its own subject (judgments nobody tuned)."""
    rows = [json.loads(line) for line in SAMPLE_CATALOGUE.read_text().splitlines() if line.strip()]
    folder.mkdir()
    with (folder / "corpus.jsonl").open("w") as out:
        for row in rows:
            doc = {"_id": row["id"], "title": row["title"], "text": row["description"]}
            out.write(json.dumps(doc) + "\n")
    subjects = sorted({row["subject"] for row in rows})
    with (folder / "queries.jsonl").open("w") as out:
        for number, text in enumerate(query_texts(subjects, rows)):
            out.write(json.dumps({"_id": f"q{number}", "text": text}) + "\n")
    with (folder / "qrels.tsv").open("w") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for number, subject in enumerate(subjects):
            for row in rows:
                if row["subject"] == subject:
                    out.write(f"q{number}\t{row['id']}\t1\n")
    return folder


@pytest.mark.slow
def test_eval_harness_writes_every_key_the_split_and_the_plot(tmp_path: Path, tiny_model: Path) -> None:
    dataset = beir_collection(tmp_path / "collection")
    out = tmp_path / "quality.json"
    command = [sys.executable, "-m", "bench.quality", "--dataset", str(dataset),
               "--seeds", "1", "--flipped-seeds", "1", "--passes", "1", "--min-new", "15",
               "--base-model", str(tiny_model), "--embedding-model", str(tiny_model), "--max-length", "64",
               "--base-queries", "5", "--train-timeout", "300", "--workdir", str(tmp_path / "work"),
               "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result.keys() >= KEYS
    # The 3,000-character query is searched (read up to the reranker's limit); the blank one is
    # refused, named with its status and the reranker's message, and the run goes on without it.
    blank = f"q{len((dataset / 'queries.jsonl').read_text().splitlines()) - 1}"
    assert list(result["refused_queries"]) == [blank], result["refused_queries"]
    assert result["refused_queries"][blank]["status"] == 422
    assert "non-space character" in result["refused_queries"][blank]["message"]
    assert f"search refused: query {blank} (3 characters) got 422" in done.stderr
    assert out.with_suffix(".png").stat().st_size > 0
    normal, flipped = result["runs"]
    assert not normal["flipped"] and flipped["flipped"]
    assert set(normal["feedback_queries"]).isdisjoint(normal["held_out_queries"])
    assert normal["feedback_sent"] >= 15 and result["feedback_used"] == normal["feedback_sent"]
    assert normal["promoted"] + normal["rejected"] >= 1, normal["runs"]  # the policy fired by itself
    for name in ("bm25", "v0", "final", "seen_v0", "seen_final"):
        assert 0.0 <= normal[name]["ndcg@10"] <= 1.0, name
    kept_v0 = flipped["promoted"] == 0 and flipped["final"]["version"] == "v0"
    assert result["gate_rejected_flipped"] == kept_v0
