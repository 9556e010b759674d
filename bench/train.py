"""Benchmark: fine-tuning time for 100, 500 and 1,000 feedback pairs (3 epochs, batch 16).

Pairs are realistic: Cranfield queries against their ~200-word aeronautics abstracts
(`../shared/datasets/cranfield`), likes on judged-relevant abstracts and dislikes on the
non-relevant ones BM25 ranks highest (what a user would have been shown); without Cranfield,
the sample catalogue with its sample queries. A validation set of other queries (a fifth of the
size) is evaluated every epoch, as in the trainer; early stopping is off so that all epochs are
timed. Each size starts from fresh base weights; model loading is not timed. The validation
AUC and nDCG@10 before and after show that speed was not bought with quality.

    .venv/bin/python -m bench.train            # writes bench/results/train.json
    .venv/bin/python -m bench.train --quick    # tiny model, seconds: checks the script itself
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness.collection import DEFAULT_DATASET as CRANFIELD
from bench.harness.results import add_output_arguments, load_average, machine, write_json
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.device import configure_torch_threads
from shared.ml.runtime.loading import cross_scores, load_cross_encoder
from shared.ml.training.dataset import Pair, group_by_query
from shared.ml.training.evaluate import classification_metrics, ranking_metrics
from shared.ml.training.hyperparameters import TrainConfig
from shared.ml.training.train import fine_tune, resolve_precision
from shared.records import Resource
from shared.settings import OFFLINE_BASE_MODEL
from tools.catalogue import read_catalogue
from tools.cli import SAMPLE_CATALOGUE, SAMPLE_QUERIES
from tools.collection import read_qrels, read_queries
from tools.people import shares_most_words
from tools.tiny_model import build_tiny_bert

SIZES = (100, 500, 1000)
PER_QUERY = 5  # likes and dislikes per query, at most
GUIDE_CPU_4_CORES_MIN = {"100": "5-8", "500": "20-30", "1000": "40-60"}


def cranfield() -> tuple[list[Resource], list[tuple[str, set[str]]]]:
    resources = list(read_catalogue(CRANFIELD / "corpus.jsonl"))
    queries = read_queries(CRANFIELD / "queries.jsonl")
    judged = read_qrels(CRANFIELD / "qrels.tsv")
    return resources, [(queries[q], set(docs)) for q, docs in judged.items() if q in queries]


def sample_catalogue() -> tuple[list[Resource], list[tuple[str, set[str]]]]:
    """Without Cranfield: the sample catalogue, its sample queries and its titles as queries, likes
    where most of the query's words appear."""
    resources = list(read_catalogue(SAMPLE_CATALOGUE))
    queries = list(read_queries(SAMPLE_QUERIES).values())
    queries += [r.title for r in resources]
    return resources, [(query, {r.id for r in resources if shares_most_words(query, r.text)})
                       for query in queries]


def build_pairs(resources: list[Resource], judged: list[tuple[str, set[str]]], seed: int) -> list[Pair]:
    """Per query, its likes and the top BM25 results it does not like, grouped by query."""
    index = CatalogueIndex(resources)
    by_id = {r.id: r for r in resources}
    rng = random.Random(seed)
    judged = list(judged)
    rng.shuffle(judged)
    pairs: list[Pair] = []
    for query, liked in judged:
        top, _ = index.bm25_top(query, 30)
        shown = [resources[i].id for i in top]
        likes = [d for d in shown if d in liked] + sorted(liked - set(shown))
        dislikes = [d for d in shown if d not in liked]
        for doc in likes[:PER_QUERY]:
            pairs.append(Pair(query, doc, by_id[doc].text, 1))
        for doc in dislikes[:PER_QUERY]:
            pairs.append(Pair(query, doc, by_id[doc].text, 0))
    return pairs


def take(pairs: list[Pair], n: int, start_query: int = 0) -> tuple[list[Pair], int]:
    """The first `n` pairs from whole queries (a query is never split), from the `start_query`-th on."""
    groups = list(group_by_query(pairs).values())[start_query:]
    out: list[Pair] = []
    used = 0
    for group in groups:
        if len(out) >= n:
            break
        out += group
        used += 1
    return out[:n], start_query + used


def quality(model, pairs: list[Pair]) -> dict[str, float]:  # noqa: ANN001 - a CrossEncoder
    groups, labels, scores = [], [], []
    for query_pairs in group_by_query(pairs).values():
        s = cross_scores(model, query_pairs[0].query, [p.text for p in query_pairs])
        y = np.array([p.label for p in query_pairs], dtype=float)
        groups.append((y, s))
        labels += y.tolist()
        scores += s.tolist()
    y, s = np.array(labels, dtype=int), np.array(scores)
    ranking = ranking_metrics(groups)
    return {"auc": classification_metrics(y, s, float(np.median(s)))["auc"], "ndcg@10": ranking["ndcg@10"]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny 2-layer model: checks the script itself")
    parser.add_argument("--model", default=None, help=f"base weights (default {OFFLINE_BASE_MODEL})")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    parser.add_argument("--seed", type=int, default=42)
    add_output_arguments(parser, "train")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The tiny model's operations are too small to share between threads: one is faster.
    threads = configure_torch_threads(args.threads or (1 if args.quick else 0))

    model_name = args.model or OFFLINE_BASE_MODEL
    tmp = None
    if args.quick and args.model is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-train-tiny-")
        model_name = str(build_tiny_bert(Path(tmp.name)))
    source = "cranfield" if (CRANFIELD / "corpus.jsonl").exists() else "sample_catalogue"
    resources, judged = cranfield() if source == "cranfield" else sample_catalogue()
    pairs = build_pairs(resources, judged, args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         seed=args.seed, early_stopping_patience=0, precision=args.precision)

    results: dict[str, object] = {}
    runs = []
    load_before = load_average()
    for n in sizes:
        train, next_query = take(pairs, n)
        val, _ = take(pairs, max(20, n // 5), next_query)
        torch.manual_seed(args.seed)  # the same random head for every setting compared
        model = load_cross_encoder(model_name, args.max_length, "cpu")
        before = quality(model, val)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = fine_tune(model, train, val, config)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        after = quality(model, val)
        results[f"seconds_{n}"] = round(wall, 1)
        runs.append({"pairs": len(train), "validation_pairs": len(val), "seconds": round(wall, 1),
                     "cpu_seconds": round(cpu, 1), "epochs_run": result.epochs_run,
                     "seconds_per_epoch": round(wall / max(result.epochs_run, 1e-9), 1),
                     "likes": sum(p.label for p in train), "validation_before": before,
                     "validation_after": after})
        print(f"pairs={len(train)} seconds={wall:.1f} cpu_seconds={cpu:.1f} epochs={result.epochs_run:.0f} "
              f"val_auc {before['auc']:.3f}->{after['auc']:.3f} "
              f"val_ndcg@10 {before['ndcg@10']:.3f}->{after['ndcg@10']:.3f}", flush=True)
        del model

    results.update({
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "model": model_name if not args.quick else "tiny-bert (2 layers, 32 wide)",
        "quick": args.quick,
        "dataset": source,
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "max_length": args.max_length,
                     "warmup_ratio": config.warmup_ratio,
                     "precision": resolve_precision(args.precision, torch.device("cpu")),
                     "length_grouped_batches": True, "early_stopping": "off (every epoch timed)",
                     "checkpoints": "none written (the trainer keeps its best epoch in memory)",
                     "torch_threads": threads,
                     "validation": "a fifth of the size, other queries, evaluated every epoch"},
        "runs": runs,
        "guide_cpu_4_cores_minutes": GUIDE_CPU_4_CORES_MIN,
        "machine": machine() | {"processor": platform.processor() or platform.machine(),
                                "torch": torch.__version__, "load_average_before": load_before,
                                "load_average_after": load_average()},
    })
    write_json(args.out, results)
    print(f"wrote {args.out}: " + " ".join(f"{k}={results[k]}" for k in results if k.startswith("seconds_"))
          + f" peak_rss_mb={results['peak_rss_mb']}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
