"""Benchmark: a fine-tuned cross-encoder served at interactive latency, against `CrossEncoder.predict`.

One run, one machine:

1. trains a cross-encoder head with the trainer's own code (`fine_tune_cross_encoder`,
   `EDURANKER_TRAIN_CROSS_ENCODER=on`) from `--base-model` on feedback: Cranfield's judgments
   of version 0's top 10 for half of its queries (the other half is held out); without
   Cranfield (or with `--quick`), BM25's order of the sample catalogue stands in for them;
2. quality, in process, on the held-out Cranfield queries (50 BM25 candidates, the whole corpus):
   nDCG@10 of that version in fp32 against the depth the cross-encoder reranks, and of the
   served pipeline (the runtime the server chose, the default depth) against fp32 full depth;
3. serves the version (`CROSS_ENCODER_PATH`) through the real reranker process (`LocalStack`:
   embedded broker, SQLite, uvicorn) and sends sequential searches: 20, 50 and 100 candidates
   at the default depth with the score cache off (uncached), 50 at full depth, then a Zipf
   query stream with the cache on (`bench.harness.traffic`); then version 0 at 50;
4. in process, with no server running: pairs/s of plain `CrossEncoder(folder).predict(pairs)`
   (default settings) against the served scorer (`cross_scores` on each runtime), and each
   runtime's top-10 agreement with torch fp32.

Texts: the sample catalogue (titles + ~40-word descriptions) and, when present, Cranfield
abstracts from ../shared/datasets/cranfield (~200 words, cut at `max_length` tokens).

    .venv/bin/python -m bench.rerank                 # writes bench/results/rerank.json
    .venv/bin/python -m bench.rerank --quick --base-model PATH --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness.collection import DEFAULT_DATASET as CRANFIELD
from bench.harness.collection import Collection
from bench.harness.measures import ndcg10, percentiles
from bench.harness.results import VAR, add_output_arguments, load_average, write_json
from bench.harness.results import machine as machine_basics
from bench.harness.traffic import Stream
from shared.ml.ranking.backends import onnx_cache, same_top_k
from shared.ml.ranking.pipeline import PipelineSpec, RankingModel, version_zero, zscore
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.device import available_cores, configure_torch_threads
from shared.ml.runtime.loading import (
    BACKENDS,
    bf16_twin,
    cross_scores,
    embed,
    load_cross_encoder,
    load_embedder,
)
from shared.ml.runtime.onnx import load_onnx_cross_encoder
from shared.ml.runtime.pair_tokens import PairTokens
from shared.ml.runtime.score_cache import ScoreCache
from shared.ml.training.dataset import Pair
from shared.records import Resource
from shared.settings import OFFLINE_BASE_MODEL, Settings
from tools.catalogue import read_catalogue
from tools.cli import SAMPLE_CATALOGUE, SAMPLE_QUERIES
from tools.client import Client
from tools.collection import read_queries

CRANFIELD_DOCS = 400
CRANFIELD_QUERIES = 20
MIN_QUERIES = 3
MIN_SAMPLES = 30
QUICK_QUERIES = 4
QUALITY_CANDIDATES = 50
DEPTHS = (10, 12, 15, 20, 30, 50)
"""Depths whose nDCG@10 is measured (50: every candidate)."""
TRAFFIC_WARM, TRAFFIC_MEASURED = 300, 300
DISTIL_CANDIDATES, DISTIL_EPOCHS, DISTIL_LEARNING_RATE = 20, 2, 3e-5
HEADS = VAR / "bench-rerank-heads"
STARTUP_TIMEOUT_S = 900  # embedding the catalogue, ONNX export and backend check, on a busy machine


def log(message: str) -> None:
    print(f"[bench/rerank {time.strftime('%H:%M:%S')}] {message}", flush=True)


def cranfield(use: bool) -> tuple[list[Resource], list[str], str]:
    """A slice of the Cranfield abstracts and queries, or nothing (with the reason)."""
    if not use:
        return [], [], "not used (--quick)"
    if not (CRANFIELD / "corpus.jsonl").is_file():
        return [], [], f"absent ({CRANFIELD}); sample catalogue only"
    docs = list(read_catalogue(CRANFIELD / "corpus.jsonl"))[:CRANFIELD_DOCS]
    queries = list(read_queries(CRANFIELD / "queries.jsonl").values())[:CRANFIELD_QUERIES]
    return docs, queries, f"{len(docs)} abstracts, {len(queries)} queries"


@dataclass
class Feedback:
    """What the head is trained on and judged by: labelled pairs, and held-out queries with judgments."""

    pairs: list[Pair]
    held_out: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str


def feedback(v0: RankingModel, index: CatalogueIndex, collection: Collection | None,
             sample_queries: list[str], quick: bool) -> Feedback:
    """Version 0's top 10 of each asked query, every shown result judged (Cranfield's judgments, not
    simulated people: the head is a fixture for timing, not a claim about learning from users);
    half the queries asked, the other half held out. Else BM25's top 3 as liked (a smoke run)."""
    pairs: list[Pair] = []
    if collection is not None:
        asked, held = collection.split(seed=1)
        asked = asked[:QUICK_QUERIES] if quick else asked
        for qid in asked:
            for p in served_top(v0, index, collection.queries[qid], 10):
                resource = index.resources[p]
                pairs.append(Pair(collection.queries[qid], resource.id, resource.text,
                                  int(collection.qrels[qid].get(resource.id, 0) > 0)))
        held = held[:QUICK_QUERIES] if quick else held
        return Feedback(pairs, {q: collection.queries[q] for q in held}, collection.qrels,
                        f"Cranfield judgments of version 0's top 10, {len(asked)} queries")
    for query in sample_queries[: QUICK_QUERIES if quick else None]:
        top, _ = index.bm25_top(query, 10)
        pairs += [Pair(query, index.resources[p].id, index.resources[p].text, int(rank < 3))
                  for rank, p in enumerate(top)]
    return Feedback(pairs, {}, {}, "BM25's top 3 of the sample catalogue as liked")


def served_top(model: RankingModel, index: CatalogueIndex, query: str, k: int,
               candidates: int = QUALITY_CANDIDATES) -> list[int]:
    """The positions a model shows first for a query, from BM25's `candidates` as the reranker does."""
    top, bm25 = index.bm25_top(query, candidates)
    if not top.size:
        return []
    return top[np.argsort(-model.score(index, query, top, bm25)["fused"], kind="stable")][:k].tolist()


def train_version(settings: Settings, v0: RankingModel, index: CatalogueIndex, data: Feedback, folder: Path,
                  head: str, quick: bool) -> dict:
    """A cross-encoder head trained on the feedback, saved as a version fusing it with version 0.

    `trainer`: the trainer's own code (`fine_tune_cross_encoder`, pointwise, the guide's settings);
    `distilled`: version 0 distilled listwise into it, raised or lowered where the judgments say
    (`bench.studies.distil`), which is what teaches a new head something on a CPU in minutes."""
    import torch

    from bench.studies.distil import distil
    from shared.ml.training.hyperparameters import TrainConfig
    from shared.ml.training.run import fine_tune_cross_encoder, split_pairs

    started = time.perf_counter()
    if head == "trainer":
        config = TrainConfig.from_settings(settings)
        config = dataclasses.replace(config, epochs=1) if quick else config
        trained = fine_tune_cross_encoder(settings, v0, split_pairs(data.pairs, seed=1), config)
        assert trained.cross is not None and trained.result is not None, trained.skipped
        cross, how = trained.cross, {"epochs": trained.result.config.get("epochs"),
                                     "learning_rate": trained.result.config.get("learning_rate")}
    else:
        labels = {(p.query, p.resource_id): p.label for p in data.pairs}
        groups = []
        for query in dict.fromkeys(p.query for p in data.pairs):
            top, bm25 = index.bm25_top(query, DISTIL_CANDIDATES)
            teacher = v0.score(index, query, top, bm25)["fused"].astype(np.float64)
            target = teacher.copy()
            for i, p in enumerate(top):
                label = labels.get((query, index.resources[p].id))
                if label is not None:
                    target[i] = teacher.max() + 1.0 if label else teacher.min() - 1.0
            groups.append((query, [index.resources[p].text for p in top], target))
        torch.manual_seed(0)  # the new head starts random: repeatable
        cross = load_cross_encoder(settings.base_model, settings.max_length, "cpu")
        epochs = 1 if quick else DISTIL_EPOCHS
        losses = distil(cross, groups, epochs, DISTIL_LEARNING_RATE, settings.max_length, log=log)
        how = {"epochs": epochs, "learning_rate": DISTIL_LEARNING_RATE, "candidates": DISTIL_CANDIDATES,
               "loss_by_epoch": [round(x, 4) for x in losses]}
    cross.save_pretrained(str(folder))
    v0.spec.model_copy(update={"version": "bench", "cross_encoder": ".",
                               "weights": {**v0.spec.weights, "cross": 1.0}}).save(folder)
    return {"how": head, "pairs": len(data.pairs), "liked": sum(p.label for p in data.pairs),
            "data": data.source, **how, "seconds": round(time.perf_counter() - started, 1),
            "base": settings.base_model, "fusion": "version 0's weights + cross 1.0"}


def head_key(args: argparse.Namespace, settings: Settings, data: Feedback) -> Path:
    """Where a trained head is kept between runs: one per way of training, base and feedback."""
    what = json.dumps([args.head, settings.base_model, settings.max_length, data.source, args.quick,
                       len(data.pairs), DISTIL_CANDIDATES, DISTIL_EPOCHS, DISTIL_LEARNING_RATE])
    return HEADS / hashlib.sha256(what.encode()).hexdigest()[:16]


def kept_head(args: argparse.Namespace, settings: Settings, data: Feedback, folder: Path) -> dict | None:
    """A head an earlier run trained the same way (`--retrain` trains anew), copied to `folder`."""
    kept = head_key(args, settings, data)
    if args.quick or args.retrain or not (kept / "head.json").is_file():
        return None
    shutil.copytree(kept, folder)
    log(f"the head trained at {kept} (--retrain trains it again)")
    return json.loads((kept / "head.json").read_text()) | {"kept_from": str(kept)}


def keep_head(args: argparse.Namespace, settings: Settings, data: Feedback, folder: Path, head: dict) -> None:
    if args.quick:
        return
    kept = head_key(args, settings, data)
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(folder, kept)
    (kept / "head.json").write_text(json.dumps(head))


def quality(folder: Path, settings: Settings, index: CatalogueIndex, v0: RankingModel, data: Feedback,
            backend: str, depth: int) -> dict:
    """On held-out queries: nDCG@10 of the version in fp32 by depth, and of the served runtime (no
    score cache) by depth with the time its ranking takes in process; how often the served runtime at
    `depth` shows fp32's top 10 (same depth: what the runtime changes; full depth: runtime and depth).

    fp32 scores each pair once (its cache), so every depth ranks with the very same fp32 scores."""
    spec = PipelineSpec.load(folder)
    fp32 = RankingModel.load(spec, folder, "cpu", embedder=v0.embedder)
    fp32.encoder, fp32.cross_cache = v0.encoder, ScoreCache(1_000_000)
    assert fp32.cross is not None
    served = dataclasses.replace(fp32, cross_cache=None, pair_tokens=PairTokens(fp32.cross.tokenizer,
                                                                                spec.max_length))
    if backend != "torch":
        served.cross = (bf16_twin(fp32.cross) if backend == "torch-bf16" else
                        load_onnx_cross_encoder(fp32.cross, folder, backend, onnx_cache(settings)))

    def ranked(model: RankingModel, times: list[float] | None = None) -> dict[str, list[str]]:
        out = {}
        for q, text in data.held_out.items():
            started = time.perf_counter()
            out[q] = [index.resources[p].id for p in served_top(model, index, text, 10)]
            if times is not None:
                times.append((time.perf_counter() - started) * 1000)
        return out

    def mean_ndcg(lists: dict[str, list[str]]) -> float:
        return round(float(np.mean([ndcg10(shown, data.qrels[q]) for q, shown in lists.items()])), 4)

    def share(a: dict[str, list[str]], b: dict[str, list[str]], same_set: bool = False) -> float:
        return round(float(np.mean([(set(a[q]) == set(b[q])) if same_set else a[q] == b[q] for q in a])), 3)

    full = ranked(fp32)
    fp32_at = {d: ranked(dataclasses.replace(fp32, depth=d)) for d in DEPTHS}
    served_at, ms = {}, {}
    for d in DEPTHS:
        times: list[float] = []
        served_at[d] = ranked(dataclasses.replace(served, depth=d), times)
        ms[d] = percentiles(times, (50, 95), mean=True)
    mine, reference = served_at.get(depth) or ranked(dataclasses.replace(served, depth=depth)), (
        fp32_at.get(depth) or ranked(dataclasses.replace(fp32, depth=depth)))
    return {
        "queries": len(data.held_out), "candidates": QUALITY_CANDIDATES, "served_backend": backend,
        "served_depth": depth, "ndcg10_version0": mean_ndcg(ranked(v0)), "ndcg10_fp32_full": mean_ndcg(full),
        "ndcg10_served": mean_ndcg(mine),
        "by_depth": {str(d): {"ndcg10_fp32": mean_ndcg(fp32_at[d]), "ndcg10_served": mean_ndcg(served_at[d]),
                              "rank_ms_served": ms[d],
                              "top10_identical_to_fp32_full": share(served_at[d], full)} for d in DEPTHS},
        "top10_identical_share": share(mine, reference),
        "top10_same_set_share": share(mine, reference, same_set=True),
        "top10_identical_share_vs_full_depth": share(mine, full),
        "top10_same_set_share_vs_full_depth": share(mine, full, same_set=True),
        "top10_identical_share_fp32_depth_vs_full": share(reference, full),
        "rank_ms": "in process, one query at a time, no score cache: BM25 top 50, version 0's scorers, "
                   "the cross-encoder on the depth's best, fusion",
    }


def measure_search(url: str, queries: list[str], candidates: int, requests: int, budget_s: float) -> dict:
    """Sequential searches (one client, keep-alive): client-side latency and candidates scored.

    Stops at `requests`, or after `budget_s` once MIN_SAMPLES are in, so a slow machine
    still finishes in minutes (`n` says how many were measured).
    """
    latencies, server, scored = [], [], []
    with Client(reranker=url, timeout=60) as client:
        def search(query: str) -> dict:
            return client.search(query, top_k=10, candidates=candidates)

        for query in queries[:3]:
            search(query)
        began = time.perf_counter()
        for i in range(requests):
            if i >= MIN_SAMPLES and time.perf_counter() - began > budget_s:
                break
            start = time.perf_counter()
            body = search(queries[i % len(queries)])
            latencies.append((time.perf_counter() - start) * 1000)
            server.append(body["latency_ms"])
            scored.append(body["candidates"])
    return {"client_ms": percentiles(latencies, mean=True), "server_ms": percentiles(server, mean=True),
            "mean_candidates": round(float(np.mean(scored)), 1), "queries": len(queries)}


def queries_with(index: CatalogueIndex, queries: list[str], n: int) -> list[str]:
    """Queries whose first stage has at least n candidates, so n are really reranked."""
    enough = [q for q in queries if index.bm25_top(q, n)[0].size >= n]
    return enough if len(enough) >= MIN_QUERIES else queries


def pair_sets(index: CatalogueIndex, queries: list[str], n: int, limit: int) -> list[tuple[str, list[str]]]:
    sets = []
    for query in queries_with(index, queries, n)[:limit]:
        top, _ = index.bm25_top(query, n)
        sets.append((query, [index.resources[p].text for p in top]))
    return sets


Scorer = Callable[[str, list[str]], np.ndarray]


def throughput(scorers: dict[str, Scorer], sets: list[tuple[str, list[str]]],
               rounds: int) -> tuple[dict[str, float], dict[str, list[np.ndarray]]]:
    """Pairs/s of each `score(query, texts)`, interleaved query by query (rotating the order) and
    best of `rounds` per query, so load from other processes hits every scorer alike."""
    for score in scorers.values():
        score(sets[0][0], sets[0][1][:4])  # warm-up
    names = list(scorers)
    best = {name: [float("inf")] * len(sets) for name in names}
    outputs: dict[str, list[np.ndarray]] = {name: [np.zeros(0)] * len(sets) for name in names}
    for round_ in range(rounds):
        for i, (query, texts) in enumerate(sets):
            shift = (i + round_) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                outputs[name][i] = np.asarray(scorers[name](query, texts), dtype=np.float32).reshape(-1)
                best[name][i] = min(best[name][i], time.perf_counter() - start)
    pairs = sum(len(texts) for _, texts in sets)
    return {name: round(pairs / sum(best[name]), 1) for name in names}, outputs


def measure_pairs(folder: Path, spec: PipelineSpec, sets: dict[str, list], cache: Path,
                  backends: tuple[str, ...], rounds: int) -> dict:
    """Plain `predict` (default settings) against each backend of the served scorer."""
    from sentence_transformers import CrossEncoder

    out: dict[str, dict] = {}
    torch_cross = load_cross_encoder(str(folder), spec.max_length, fallback=False)
    tokenizer = torch_cross.tokenizer
    baseline = CrossEncoder(str(folder))
    scorers: dict[str, Scorer] = {"baseline": lambda q, t: baseline.predict([(q, x) for x in t])}
    for backend in backends:
        cross = (torch_cross if backend == "torch" else bf16_twin(torch_cross) if backend == "torch-bf16"
                 else load_onnx_cross_encoder(torch_cross, folder, backend, cache))
        scorers[backend] = lambda q, t, c=cross: cross_scores(c, q, t)
    for name, pairs in sets.items():
        if not pairs:
            continue
        log(f"pairs/s on {name}: {sum(len(t) for _, t in pairs)} pairs x {len(scorers)} scorers x {rounds}")
        tokens = [len(tokenizer(q, t, truncation=True, max_length=spec.max_length)["input_ids"])
                  for q, texts in pairs for t in texts]
        speeds, scores = throughput(scorers, pairs, rounds)
        reference = scores["torch" if "torch" in scores else "baseline"]
        agreement = {backend: round(float(np.mean([same_top_k(zscore(r), zscore(s)) for r, s in
                                                   zip(reference, scores[backend], strict=True)])), 3)
                     for backend in backends}
        out[name] = {"baseline_pairs_per_s": speeds.pop("baseline"), "pairs_per_s": speeds,
                     "top10_agreement_with_torch": agreement, "pairs": sum(len(t) for _, t in pairs),
                     "queries": len(pairs), "mean_tokens_per_pair": round(float(np.mean(tokens)), 1),
                     "baseline_max_length": baseline.max_seq_length}
    return out


def dense_query_ms(base_model: str, queries: list[str], max_length: int) -> dict[str, float]:
    embedder = load_embedder(base_model, max_length)
    embed(embedder, queries[:2])
    times = []
    for i in range(50):
        start = time.perf_counter()
        embed(embedder, [queries[i % len(queries)]])
        times.append((time.perf_counter() - start) * 1000)
    return percentiles(times, mean=True)


def machine() -> dict:
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    return machine_basics() | {"cpu": cpu, "cores": available_cores(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def measure_traffic(url: str, queries: list[str], warm: int, measured: int) -> dict:
    """The harness's Zipf stream (new queries keep arriving): `warm` searches fill the score cache,
    the next `measured` are timed."""
    stream = Stream(queries, warm + measured, random.Random(7))
    latencies = []
    with Client(reranker=url, timeout=60) as client:
        for step in range(warm + measured):
            start = time.perf_counter()
            client.search(stream.at(step), top_k=10, candidates=50)
            if step >= warm:
                latencies.append((time.perf_counter() - start) * 1000)
        cache = client.model_info()["cross_cache"]
    return {"client_ms": percentiles(latencies, mean=True), "queries": len(queries), "warm_searches": warm,
            "cross_cache": cache, "stream": "bench.harness.traffic.Stream, Zipf s=1, a fifth of the "
                                            "queries at the start, the rest arriving evenly"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, no Cranfield: a smoke run")
    parser.add_argument("--base-model", default=OFFLINE_BASE_MODEL)
    parser.add_argument("--requests", type=int, default=None, help="searches per candidate count")
    parser.add_argument("--budget-s", type=float, default=45.0,
                        help="time per latency point, once 30 searches are in")
    parser.add_argument("--backend", default=os.environ.get("EDURANKER_BACKEND", "auto"))
    parser.add_argument("--head", choices=("distilled", "trainer"), default="distilled",
                        help="how the cross-encoder's head is trained (see train_version)")
    parser.add_argument("--retrain", action="store_true", help="train the head even if one is kept")
    add_output_arguments(parser, "rerank")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the services it started, too
    requests = args.requests or (5 if args.quick else 100)
    started, load_before = time.perf_counter(), load_average()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_torch_threads()
    settings = Settings(base_model=args.base_model, embedding_model=args.base_model, train_cross_encoder="on",
                        backend=args.backend)

    from tools.localstack import LocalStack, wait_for

    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        work = Path(tmp)
        settings = settings.model_copy(update={"onnx_cache_dir": work / "onnx"})
        collection = (Collection.load(CRANFIELD) if not args.quick and (CRANFIELD / "corpus.jsonl").is_file()
                      else None)
        sample_queries = list(read_queries(SAMPLE_QUERIES).values())
        v0 = RankingModel.load(version_zero(settings), None, "cpu")
        judged = collection.resources() if collection is not None else list(read_catalogue(SAMPLE_CATALOGUE))
        log(f"version 0 on {len(judged)} resources, for the feedback and the quality check")
        judged_index = CatalogueIndex(judged, v0.embed_texts([r.text for r in judged]))
        data = feedback(v0, judged_index, collection, sample_queries, args.quick)
        folder = work / "bench-version"
        head = kept_head(args, settings, data, folder)
        if head is None:
            folder.mkdir()
            log(f"training the head ({args.head}): {len(data.pairs)} pairs ({data.source})")
            head = train_version(settings, v0, judged_index, data, folder, args.head, args.quick)
            keep_head(args, settings, data, folder, head)
        spec = PipelineSpec.load(folder)
        cran_docs, cran_queries, cran_note = cranfield(not args.quick)
        catalogue = work / "catalogue.jsonl"
        catalogue.write_text(SAMPLE_CATALOGUE.read_text()
                             + "".join(d.model_dump_json() + "\n" for d in cran_docs))
        resources: list[Resource] = list(read_catalogue(catalogue))
        index = CatalogueIndex(resources)
        queries = sample_queries + cran_queries
        env = {"EDURANKER_BASE_MODEL": args.base_model, "EDURANKER_EMBEDDING_MODEL": args.base_model,
               "CROSS_ENCODER_PATH": str(folder), "EDURANKER_BACKEND": args.backend,
               "EDURANKER_ONNX_CACHE_DIR": str(work / "onnx"), "EDURANKER_LOG_LEVEL": "WARNING",
               "EDURANKER_CROSS_CACHE_ENTRIES": "0"}
        search: dict[str, dict] = {}
        with LocalStack(work / "stack", env=env) as stack:
            log(f"reranker on the bench version: {len(resources)} resources, Cranfield {cran_note}")
            stack.start_broker()
            stack.load_catalogue(catalogue)
            url = stack.url("reranker")

            def serve(**changes: str | None) -> dict:
                for name, value in changes.items():
                    if value is None:
                        stack.env.pop(name, None)
                    else:
                        stack.env[name] = value
                if "reranker" in stack.processes:
                    stack.stop_service("reranker")
                stack.start_service("reranker")
                stack.wait_ready("reranker", timeout_s=STARTUP_TIMEOUT_S)
                with Client(reranker=url, timeout=10) as client:  # every vector in: nothing else runs
                    return wait_for(lambda: (lambda i: i if (i["embedding"] or {}).get("complete") else None)(
                        client.model_info()), STARTUP_TIMEOUT_S, 0.5, "every vector embedded")

            def point(n: int) -> dict:
                log(f"up to {requests} searches at {n} candidates")
                return measure_search(url, queries_with(index, queries, n), n, requests, args.budget_s)

            info = serve()
            log(f"serving {info['version']} kind={info['kind']} backend={info['backend']} "
                f"({info['backend_selection']['reason']}), depth {info['rerank_depth']}, cache off")
            for n in (20, 50, 100):
                search[str(n)] = point(n)
            serve(EDURANKER_RERANK_DEPTH="0")
            log("full depth: the cross-encoder scores every candidate")
            search["50_full_depth"] = point(50)
            serve(EDURANKER_RERANK_DEPTH=None, EDURANKER_CROSS_CACHE_ENTRIES=None)
            warm, measured = (10, 10) if args.quick else (TRAFFIC_WARM, TRAFFIC_MEASURED)
            log(f"Zipf traffic, score cache on: {warm} searches to warm it, {measured} timed")
            search["traffic"] = measure_traffic(url, queries_with(index, queries, 50), warm, measured)
            log("version 0 (no cross-encoder)")
            v0_info = serve(CROSS_ENCODER_PATH=None)
            search["v0_50"] = point(50)
        served = info["backend"]
        kept = (quality(folder, settings, judged_index, v0, data, served, info["rerank_depth"])
                if data.held_out else None)
        log(f"quality on held-out queries: {kept}")
        sample = [r for r in resources if not r.id.isdigit()]
        sets = {"catalogue": pair_sets(CatalogueIndex(sample), sample_queries, 50, 4 if args.quick else 8),
                "cranfield": pair_sets(CatalogueIndex([r for r in resources if r.id.isdigit()]),
                                       cran_queries, 50, 5) if cran_docs else []}
        backends = (served,) if args.quick else BACKENDS
        pairs = measure_pairs(folder, spec, sets, work / "onnx", backends, 1 if args.quick else 2)
        dense = dense_query_ms(args.base_model, sample_queries, spec.max_length)

    result: dict = {
        "head": "trained",
        "pairs_per_s": pairs["catalogue"]["pairs_per_s"][served],
        "baseline_pairs_per_s": pairs["catalogue"]["baseline_pairs_per_s"],
        "speedup": round(pairs["catalogue"]["pairs_per_s"][served]
                         / pairs["catalogue"]["baseline_pairs_per_s"], 2),
    }
    if "cranfield" in pairs:
        cran = pairs["cranfield"]
        result |= {"pairs_per_s_cranfield": cran["pairs_per_s"][served],
                   "baseline_pairs_per_s_cranfield": cran["baseline_pairs_per_s"],
                   "speedup_cranfield": round(cran["pairs_per_s"][served] / cran["baseline_pairs_per_s"], 2)}
    for n in ("20", "50", "100"):
        for p in ("p50", "p95", "p99"):
            result[f"search_{p}_ms_{n}"] = search[n]["client_ms"][p]
    result |= {"search_p95_ms_50_full_depth": search["50_full_depth"]["client_ms"]["p95"],
               "search_p95_ms_traffic": search["traffic"]["client_ms"]["p95"],
               "search_p50_ms_traffic": search["traffic"]["client_ms"]["p50"],
               "cache_hit_rate_traffic": search["traffic"]["cross_cache"]["hit_rate"],
               "ndcg10_delta_vs_fp32_full": (round(kept["ndcg10_served"] - kept["ndcg10_fp32_full"], 4)
                                             if kept else None),
               "top10_identical_share": kept["top10_identical_share"] if kept else None,
               "v0_search_p50_ms_50": search["v0_50"]["client_ms"]["p50"],
               "v0_search_p95_ms_50": search["v0_50"]["client_ms"]["p95"],
               "v0_search_p99_ms_50": search["v0_50"]["client_ms"]["p99"]}
    result |= {
        "search": search,
        "quality": kept,
        "trained_head": head,
        "pairs": pairs,
        "dense_query_ms": dense,
        "served": {"version": info["version"], "kind": info["kind"], "backend": served,
                   "backend_selection": info["backend_selection"], "rerank_depth": info["rerank_depth"],
                   "v0_kind": v0_info["kind"]},
        "settings": {"base_model": args.base_model, "max_length": spec.max_length, "backend": args.backend,
                     "torch_threads": available_cores(), "requests_per_point": requests,
                     "budget_s_per_point": args.budget_s,
                     "client": "one sequential client, keep-alive, top_k=10",
                     "catalogue": f"{len(resources)} resources (sample catalogue + Cranfield: {cran_note})",
                     "uncached": "search_*_ms_{20,50,100} and _full_depth: EDURANKER_CROSS_CACHE_ENTRIES=0",
                     "baseline": "CrossEncoder(folder).predict(pairs), default settings",
                     "top10_agreement": "share of queries whose top 10 (z-scored logits) matches "
                                        "torch's, swaps allowed within 0.01",
                     "pairs_per_s": "interleaved query by query, best of 2 rounds per query"},
        "machine": machine() | {"load_average_before": load_before, "load_average_after": load_average()},
        "quick": args.quick,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, result)
    log(f"wrote {args.out} in {result['runtime_s']} s: "
        + ", ".join(f"{k}={result[k]}" for k in ("speedup", "search_p95_ms_50", "search_p95_ms_traffic",
                                                   "ndcg10_delta_vs_fp32_full", "top10_identical_share",
                                                   "v0_search_p95_ms_50")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
