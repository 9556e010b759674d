"""What a trained version does to queries nobody rated: offline, in one process, on Cranfield.

Simulated people rate version 0's lists for a stream of traffic queries (as `make online` plays
them); a candidate is trained from their pairs with the trainer's own steps; held-out queries
(never asked) are then ranked by version 0 and by the candidate over the reranker's candidates.

    .venv/bin/python -m bench.studies.memory --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.harness.collection import DEFAULT_DATASET, Collection
from bench.harness.measures import ndcg10, paired_gain
from bench.harness.results import add_output_arguments, write_json
from bench.harness.traffic import Stream
from shared.ml.ranking.backends import onnx_cache
from shared.ml.ranking.pipeline import RankingModel, version_zero
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.embedder import load_encoder
from shared.ml.training.dataset import Pair
from shared.ml.training.run import (
    NEIGHBOUR_WEIGHTS,
    assemble_candidate,
    choose_weights,
    remembered_from,
    split_pairs,
)
from shared.settings import Settings
from tools.people import People


def ranked(model: RankingModel, index: CatalogueIndex, query: str, candidates: int = 50,
           top_k: int = 10) -> list[str]:
    positions, bm25 = index.bm25_top(query, candidates)
    fused = model.score(index, query, positions, bm25)["fused"]
    return [index.resources[p].id for p in positions[np.argsort(-fused, kind="stable")[:top_k]]]


def play(model: RankingModel, index: CatalogueIndex, collection: Collection, traffic: list[str],
         searches: int, rng: random.Random) -> list[Pair]:
    """Pairs as the trainer builds them: each search a different person, the majority per pair."""
    people, stream = People(), Stream(traffic, searches, rng)
    votes: dict[tuple[str, str], list[int]] = defaultdict(list)
    shown_cache: dict[str, list[str]] = {}
    for step in range(searches):
        qid = stream.at(step)
        shown = shown_cache.setdefault(qid, ranked(model, index, collection.queries[qid]))
        for position, label in people.rate(shown, collection.qrels[qid], rng):
            votes[(qid, shown[position])].append(1 if label == "like" else 0)
    text = {r.id: r.text for r in index.resources}
    pairs = []
    for (qid, rid), labels in sorted(votes.items()):
        likes = sum(labels)
        label = int(likes > len(labels) - likes) if 2 * likes != len(labels) else labels[-1]
        pairs.append(Pair(collection.queries[qid], rid, text[rid], label, len(labels)))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--searches", type=int, nargs="+", default=[800, 1600, 3200])
    parser.add_argument("--memory-weights", type=float, nargs="+", default=[2.0])
    parser.add_argument("--neighbours", type=float, nargs="*", default=None,
                        help="fixed neighbour weights to try besides the fitted one")
    add_output_arguments(parser, "memory_study")
    args = parser.parse_args()
    settings = Settings()
    collection = Collection.load(args.dataset)
    resources = collection.resources()
    v0 = RankingModel.load(version_zero(settings), None, settings.device)
    v0.encoder = load_encoder(v0.embedder, settings.embedding_backend, onnx_cache(settings),
                              settings.torch_threads)
    index = CatalogueIndex(resources, v0.embed_texts([r.text for r in resources]))
    out = []
    for seed in args.seeds:
        rng = random.Random(seed)
        qids = sorted(q for q, text in collection.queries.items() if text.strip())  # a blank one: no search
        rng.shuffle(qids)
        cut = round(len(qids) * 0.75)
        traffic, held_out = sorted(qids[:cut]), sorted(qids[cut:])
        base = {q: ndcg10(ranked(v0, index, collection.queries[q]), collection.qrels[q]) for q in qids}
        base_held = {q: base[q] for q in held_out}
        for searches in args.searches:
            pairs = play(v0, index, collection, traffic, searches, random.Random(seed * 1000 + searches))
            split = split_pairs(pairs, 42)
            rated = sorted({q for q in traffic if any(p.query == collection.queries[q] for p in pairs)})
            for memory_weight in args.memory_weights:
                weighted = settings.model_copy(update={"memory_weight": memory_weight})
                candidate, memory = assemble_candidate(weighted, v0, None, remembered_from(pairs), split)
                fitted = choose_weights(candidate, index, split.train, {"neighbours": NEIGHBOUR_WEIGHTS})
                candidate.memory = memory
                for label, weights in [("fitted", fitted)] + [
                        (f"n={n}", {**fitted, "neighbours": n}) for n in args.neighbours or []]:
                    candidate.spec = candidate.spec.model_copy(update={"weights": weights})
                    held = {q: ndcg10(ranked(candidate, index, collection.queries[q]), collection.qrels[q])
                            for q in held_out}
                    seen = {q: ndcg10(ranked(candidate, index, collection.queries[q]), collection.qrels[q])
                            for q in rated}
                    row = {"seed": seed, "searches": searches, "pairs": len(pairs),
                           "rated_queries": len(rated), "variant": label, "memory_weight": memory_weight,
                           "neighbours": weights["neighbours"],
                           "held_out": paired_gain(base_held, held),
                           "rated": paired_gain({q: base[q] for q in rated}, seen)}
                    print(f"seed {seed} searches {searches} pairs {len(pairs)} memory {memory_weight} "
                          f"{label} neighbours {weights['neighbours']}: held {row['held_out']['mean']:+.4f} "
                          f"[{row['held_out']['ci95'][0]:+.3f},{row['held_out']['ci95'][1]:+.3f}] "
                          f"rated {row['rated']['mean']:+.4f}", flush=True)
                    out.append(row)
    write_json(args.out, {"dataset": str(args.dataset), "settings": vars(args) | {
        "dataset": str(args.dataset), "out": str(args.out)}, "people": People().parameters(), "runs": out})
    for key in sorted({(r["variant"], r["memory_weight"]) for r in out}):
        rows = [r for r in out if (r["variant"], r["memory_weight"]) == key]
        print(key, "held-out", round(statistics.mean(r["held_out"]["mean"] for r in rows), 4),
              "rated", round(statistics.mean(r["rated"]["mean"] for r in rows), 4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
