"""Test feedback written straight into the store: `python -m tools.sample_feedback --count 200`.

For trying the notebook or the trainer without running the services. Each sample query is
searched with first-stage BM25 over the catalogue, the search is logged as an inference, and
the shown results get a like or a dislike from the same simulated people that the `traffic`
command plays through the HTTP API (`tools.people`: `People.attentive` with `like_rule`), a
different session for each search, as different people would (the evidence counts each person
once). Feedback goes through `Store.record_feedback`, so its events are queued in the outbox like
the collector's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path

from shared.ml.ranking.retrieval import CatalogueIndex
from shared.records import Feedback, Inference, ShownResult, new_id
from shared.store import Store, open_store
from tools.catalogue import read_catalogue
from tools.cli import SAMPLE_CATALOGUE, SAMPLE_QUERIES
from tools.collection import read_queries
from tools.local_settings import local_settings
from tools.people import People, like_rule

SAMPLE_MODEL_VERSION = "sample-bm25"
"""What produced the sample rankings: BM25 alone, never a served model version."""


async def ensure_catalogue(store: Store, catalogue: Path = SAMPLE_CATALOGUE) -> int:
    """Loads the catalogue when the store has no resources yet; returns how many there are."""
    resources = await store.list_resources()
    if resources:
        return len(resources)
    return await store.upsert_resources(list(read_catalogue(catalogue)))


async def generate(store: Store, count: int, queries: list[str], seed: int = 0, top_k: int = 10,
                   skip: float = 0.3, is_test: bool = False) -> Counter[str]:
    """Logs searches and rates their results until `count` feedback records are written.

    Queries are taken in a shuffled round, so every query gets feedback before any repeats.
    """
    if count < 0:
        raise ValueError("count must be zero or more")
    if not queries:
        raise ValueError("no queries to search")
    resources = await store.list_resources()
    if not resources:
        raise ValueError("the store has no resources: load a catalogue first (ensure_catalogue)")
    index = CatalogueIndex(resources)
    rng = random.Random(seed)
    people = People.attentive(skip)
    sent: Counter[str] = Counter()
    order: list[str] = []
    found_nothing = 0
    while sent["feedback"] < count:
        if not order:
            order = rng.sample(queries, len(queries))
        query = order.pop()
        positions, scores = index.bm25_top(query, top_k)
        if positions.size == 0:
            found_nothing += 1
            if found_nothing >= 2 * len(queries):  # holds a whole shuffled round: none can match
                raise ValueError("no query matches the catalogue: nothing to rate")
            continue
        found_nothing = 0
        shown = [ShownResult(resource_id=index.resources[p].id, rank=rank, first_stage_score=float(s))
                 for rank, (p, s) in enumerate(zip(positions, scores, strict=True), start=1)]
        inference = Inference(inference_id=new_id(), query=query, model_version=SAMPLE_MODEL_VERSION,
                              use_reranker=False, results=shown, latency_ms=0.0)
        await store.add_inferences([inference])
        sent["searches"] += 1
        liked = {r.resource_id for r, p in zip(shown, positions, strict=True)
                 if like_rule(query, index.resources[p].model_dump())}
        for i, label in people.rate([r.resource_id for r in shown], liked, rng):
            if sent["feedback"] >= count:
                break
            result = shown[i]
            await store.record_feedback(Feedback(
                feedback_id=new_id(), inference_id=inference.inference_id, resource_id=result.resource_id,
                label=label, rank=result.rank, model_version=SAMPLE_MODEL_VERSION,
                session_id=f"sample-{seed}-{sent['searches']}", is_test=is_test,
            ))
            sent["feedback"] += 1
            sent[label] += 1
    return sent


async def fill(store_url: str, count: int, seed: int = 0, queries: list[str] | None = None,
               catalogue: Path = SAMPLE_CATALOGUE, is_test: bool = False) -> Counter[str]:
    """Opens the store, loads the sample catalogue if it is empty, and writes `count` feedback."""
    store = await open_store(store_url)
    try:
        await ensure_catalogue(store, catalogue)
        queries = queries or list(read_queries(SAMPLE_QUERIES).values())
        return await generate(store, count, queries, seed=seed, is_test=is_test)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sample_feedback",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200, help="feedback records to write")
    parser.add_argument("--store-url", default=None,
                        help="default: EDURANKER_STORE_URL, else `make run`'s store (var/eduranker.db)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=Path, default=SAMPLE_QUERIES)
    parser.add_argument("--catalogue", type=Path, default=SAMPLE_CATALOGUE,
                        help="loaded only when the store has no resources yet")
    parser.add_argument("--mark-test", action="store_true", help="mark feedback as test (not trained on)")
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be zero or more")
    store_url = args.store_url or local_settings().store_url
    started = time.perf_counter()
    try:
        queries = list(read_queries(args.queries).values())
        sent = asyncio.run(fill(store_url, args.count, args.seed, queries, args.catalogue, args.mark_test))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"store={store_url} searches={sent['searches']} feedback={sent['feedback']} "
          f"like={sent['like']} dislike={sent['dislike']} seconds={time.perf_counter() - started:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
