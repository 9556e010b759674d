"""Queries and relevance judgments: what a test collection holds beside its corpus.

A BEIR collection is a folder with `corpus.jsonl` (a catalogue: `tools.catalogue.read_catalogue`
reads it), `queries.jsonl` and `qrels.tsv`; the sample queries in `data/` are a text file, one
query a line. The traffic command, the sample feedback and the benchmarks all read them here.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_queries(path: Path) -> dict[str, str]:
    """Query id to text, in file order: a BEIR `queries.jsonl` (`{"_id", "text"}` a line), or a
    text file, one query a line (its id is its number among the non-blank lines, from 1)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in lines]
        return {str(row["_id"]): row["text"] for row in rows}
    return {str(n): line for n, line in enumerate(lines, start=1)}


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR `qrels.tsv` (`query-id`, `corpus-id`, `score`, a header line): every judgment, by query
    and resource, whatever its score (BEIR counts unjudged resources as not relevant).

    Raises ValueError naming the line that is not three tab-separated fields.
    """
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if number == 1 and not parts[-1].strip().lstrip("-").isdigit():
            continue  # the header
        if len(parts) != 3 or not parts[2].strip().lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected query-id<TAB>corpus-id<TAB>score")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def relevant(qrels: dict[str, dict[str, int]], min_score: int = 1) -> dict[str, dict[str, int]]:
    """The judgments of at least `min_score`, for the queries that have any."""
    kept = {qid: {doc: score for doc, score in judged.items() if score >= min_score}
            for qid, judged in qrels.items()}
    return {qid: judged for qid, judged in kept.items() if judged}
