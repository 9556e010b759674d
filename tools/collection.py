"""Queries and relevance judgments: what a test collection holds beside its corpus.

A BEIR collection is a folder with `corpus.jsonl` (a catalogue: `tools.catalogue.read_catalogue`
reads it), `queries.jsonl` and `qrels.tsv`; the sample queries in `data/` are a text file, one
query a line. The traffic command, the sample feedback and the benchmarks all read them here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_queries(path: Path) -> dict[str, str]:
    """Query id to text, in file order: a BEIR `queries.jsonl` (`{"_id", "text"}` a line), or a
    text file, one query a line (its id is its number among the non-blank lines, from 1).

    Raises ValueError naming the file, and the line where one is wrong.
    """
    lines = read_lines(path)
    if path.suffix != ".jsonl":
        texts = [line.strip() for line in lines if line.strip()]
        return {str(n): text for n, text in enumerate(texts, start=1)}
    queries: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = json_object(path, number, line)
        if "_id" not in row or not isinstance(row.get("text"), str):
            raise ValueError(f'{path}:{number}: expected {{"_id": ..., "text": "..."}}, a BEIR query')
        queries[str(row["_id"])] = row["text"]
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR `qrels.tsv` (`query-id`, `corpus-id`, `score`, a header line): every judgment, by query
    and resource, whatever its score (BEIR counts unjudged resources as not relevant).

    Raises ValueError naming the file, and the line that is not three tab-separated fields.
    """
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if number == 1 and not parts[-1].strip().lstrip("-").isdigit():
            continue  # the header
        if len(parts) != 3 or not parts[2].strip().lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected query-id<TAB>corpus-id<TAB>score")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def read_lines(path: Path) -> list[str]:
    """A UTF-8 text file's lines; a file that cannot be read is a ValueError that says why."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from exc


def json_object(path: Path, number: int, line: str) -> dict[str, Any]:
    """Line `number` of a JSONL file as a JSON object, or a ValueError naming the line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                         "a JSONL file holds one JSON object per line") from exc
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    return row


def relevant(qrels: dict[str, dict[str, int]], min_score: int = 1) -> dict[str, dict[str, int]]:
    """The judgments of at least `min_score`, for the queries that have any."""
    kept = {qid: {doc: score for doc, score in judged.items() if score >= min_score}
            for qid, judged in qrels.items()}
    return {qid: judged for qid, judged in kept.items() if judged}
