"""Queries and judgments as the traffic command, the sample feedback and the benchmarks read them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.cli import SAMPLE_QUERIES
from tools.collection import read_qrels, read_queries, relevant


def test_queries_are_id_to_text_from_a_text_file_or_beir_jsonl(tmp_path: Path) -> None:
    text = tmp_path / "queries.txt"
    text.write_text("first query\n\n  second query  \n")
    assert read_queries(text) == {"1": "first query", "2": "second query"}

    beir = tmp_path / "queries.jsonl"
    beir.write_text("".join(json.dumps(row) + "\n" for row in
                            ({"_id": 7, "text": "seven"}, {"_id": "q2", "text": "two", "metadata": {}})))
    assert list(read_queries(beir).items()) == [("7", "seven"), ("q2", "two")]

    sample = read_queries(SAMPLE_QUERIES)
    assert len(sample) > 10 and all(text.strip() == text and text for text in sample.values())


def test_qrels_keep_every_judgment_with_its_score_and_name_a_bad_line(tmp_path: Path) -> None:
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\td1\t2\n1\td2\t0\n2\td1\t-1\n3\td3\t1\n")
    judged = read_qrels(qrels)
    assert judged == {"1": {"d1": 2, "d2": 0}, "2": {"d1": -1}, "3": {"d3": 1}}
    assert relevant(judged) == {"1": {"d1": 2}, "3": {"d3": 1}}
    assert relevant(judged, min_score=2) == {"1": {"d1": 2}}

    headless = tmp_path / "headless.tsv"
    headless.write_text("1\td1\t1\n")
    assert read_qrels(headless) == {"1": {"d1": 1}}

    broken = tmp_path / "broken.tsv"
    broken.write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1 d2 1\n")
    with pytest.raises(ValueError, match=r"broken.tsv:3: expected query-id<TAB>corpus-id<TAB>score"):
        read_qrels(broken)


@pytest.mark.parametrize(("content", "says"), [
    (b'{"_id": "1", "text": "one"}\n{"_id": "2"\n', r"queries.jsonl:2: not valid JSON"),
    (b'\n["1", "one"]\n', r"queries.jsonl:2: expected a JSON object, got list"),
    (b'{"_id": "1"}\n', r'queries.jsonl:1: expected \{"_id": ..., "text": "..."\}'),
    (b'{"_id": "1", "text": 5}\n', r'queries.jsonl:1: expected \{"_id"'),
    ('{"_id": "1", "text": "\u00e9t\u00e9"}\n'.encode("latin-1"), r"queries.jsonl: not UTF-8 text"),
])
def test_a_bad_queries_file_is_named_with_its_line(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=says):
        read_queries(path)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    for read in (read_queries, read_qrels):
        with pytest.raises(ValueError, match=r"missing.tsv: cannot read it \(No such file or directory\)"):
            read(tmp_path / "missing.tsv")
