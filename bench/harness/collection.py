"""Test collections: a BEIR collection's queries and judgments with its corpus as the catalogue,
and synthetic catalogues of any size.

A BEIR collection is a folder with `corpus.jsonl`, `queries.jsonl` and `qrels.tsv`
(`tools.collection` and `tools.catalogue` read them); the default is the Cranfield collection
beside the repository, in `../shared/datasets/cranfield`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from bench.harness.results import ROOT, quiet_logging
from shared.records import Resource
from tools.catalogue import read_catalogue
from tools.cli import SAMPLE_CATALOGUE
from tools.collection import read_qrels, read_queries, relevant

DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "cranfield"


@dataclass
class Collection:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: Path

    @classmethod
    def load(cls, folder: Path) -> Collection:
        """The queries that have a relevant resource, and their relevant resources (score > 0)."""
        qrels = relevant(read_qrels(folder / "qrels.tsv"))
        queries = read_queries(folder / "queries.jsonl")
        return cls({q: t for q, t in queries.items() if q in qrels}, qrels, folder / "corpus.jsonl")

    def split(self, seed: int, held_out_share: float = 0.5) -> tuple[list[str], list[str]]:
        """(asked, held out): the queries shuffled by `seed`, the last `held_out_share` held out."""
        ids = sorted(self.queries)
        random.Random(seed).shuffle(ids)
        cut = round(len(ids) * (1 - held_out_share))
        return sorted(ids[:cut]), sorted(ids[cut:])

    def blank_queries(self) -> list[str]:
        """Queries with no text: a search needs some, the reranker refuses them (422)."""
        return sorted(q for q, text in self.queries.items() if not text.strip())

    def resources(self) -> list[Resource]:
        """The corpus as the catalogue the services load."""
        return list(read_catalogue(self.corpus))


def start_harness(dataset: Path) -> Collection:
    """The run's logging (`quiet_logging`), then the collection in `dataset`; when there is none,
    the run ends there (exit status 2), having said why."""
    quiet_logging()
    if not (dataset / "corpus.jsonl").exists():
        print(f"no BEIR collection at {dataset}: pass --dataset "
              "(a folder with corpus.jsonl, queries.jsonl, qrels.tsv)")
        raise SystemExit(2)
    return Collection.load(dataset)


def synthetic_resources(count: int, seed: int = 0, start: int = 0) -> list[dict]:
    """Resources in the README's JSONL layout: a 4-8 word title and a 90-110 word description whose
    words follow the sample catalogue's frequencies (a realistic length and vocabulary shape)."""
    rows = [json.loads(line) for line in SAMPLE_CATALOGUE.read_text().splitlines() if line.strip()]
    text = " ".join(f"{r['title']} {r['description']}" for r in rows)
    words = text.replace(".", "").replace(",", "").split()
    subjects = sorted({r["subject"] for r in rows})
    rng = random.Random(seed)
    out = []
    for n in range(start, start + count):
        title = " ".join(rng.choices(words, k=rng.randint(4, 8))).capitalize()
        sentences = [" ".join(rng.choices(words, k=rng.randint(12, 20))).capitalize() + "."
                     for _ in range(7)]
        description = " ".join(sentences)
        out.append({"id": f"syn-{n:07d}", "title": title, "description": description,
                    "subject": rng.choice(subjects),
                    "level": rng.choice(["beginner", "intermediate", "advanced"]),
                    "type": rng.choice(["course", "video", "book", "tutorial", "exercise"]),
                    "url": f"https://example.org/resources/syn-{n:07d}"})
    return out
