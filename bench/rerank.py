"""Benchmark: search latency over HTTP and cross-encoder throughput, against plain `CrossEncoder.predict`.

One run, one machine:

1. builds a trained-looking version folder (a `CrossEncoder` saved from the base weights, and
   a `pipeline.json` fusing bm25 + dense + cross) and serves it with `CROSS_ENCODER_PATH`
   through the real reranker process (`LocalStack`: embedded broker, SQLite, uvicorn);
2. sends `--requests` sequential searches for 20, 50 and 100 candidates (queries that have at
   least that many BM25 matches) and records p50/p95/p99 of the client-side latency;
3. restarts the reranker on version 0 (bm25 + dense, no cross-encoder) for 50 candidates;
4. in-process, with no server running: pairs/s of plain `CrossEncoder(folder).predict(pairs)`
   (default settings) against the served scorer (`cross_scores` with the backend the server
   chose), plus every backend's pairs/s and its top-10 agreement with torch.

Texts: the sample catalogue (titles + ~40-word descriptions) and, when present, Cranfield
abstracts from ../shared/datasets/cranfield (~200 words; skipped with a note when absent).

    .venv/bin/python -m bench.rerank                 # writes bench/results/rerank.json
    .venv/bin/python -m bench.rerank --quick --base-model PATH --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.harness.collection import DEFAULT_DATASET as CRANFIELD
from bench.harness.measures import percentiles
from bench.harness.results import add_output_arguments, load_average, write_json
from bench.harness.results import machine as machine_basics
from shared.ml.ranking.backends import same_top_k
from shared.ml.ranking.pipeline import PipelineSpec, zscore
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.device import available_cores, configure_torch_threads
from shared.ml.runtime.loading import BACKENDS, cross_scores, embed, load_cross_encoder, load_embedder
from shared.ml.runtime.onnx import load_onnx_cross_encoder
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


def build_version(base_model: str, folder: Path, max_length: int) -> Path:
    """What a trained version looks like on disk: the cross-encoder plus the fusion spec."""
    import torch

    torch.manual_seed(0)  # the offline weights have no cross-encoder head: make its init repeatable
    cross = load_cross_encoder(base_model, max_length)
    cross.save_pretrained(str(folder))
    PipelineSpec(version="bench", base_model=base_model, embedding_model=base_model, cross_encoder=".",
                 weights={"bm25": 1.0, "dense": 1.0, "cross": 1.0}, max_length=max_length).save(folder)
    return folder


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
        cross = (torch_cross if backend == "torch"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, no Cranfield: a smoke run")
    parser.add_argument("--base-model", default=OFFLINE_BASE_MODEL)
    parser.add_argument("--requests", type=int, default=None, help="searches per candidate count")
    parser.add_argument("--budget-s", type=float, default=45.0,
                        help="time per latency point, once 30 searches are in")
    parser.add_argument("--backend", default=os.environ.get("EDURANKER_BACKEND", "auto"))
    add_output_arguments(parser, "rerank")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the services it started, too
    requests = args.requests or (5 if args.quick else 100)
    started, load_before = time.perf_counter(), load_average()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_torch_threads()
    settings = Settings()

    from tools.localstack import LocalStack

    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        work = Path(tmp)
        folder = build_version(args.base_model, work / "bench-version", settings.max_length)
        spec = PipelineSpec.load(folder)
        cran_docs, cran_queries, cran_note = cranfield(not args.quick)
        catalogue = work / "catalogue.jsonl"
        catalogue.write_text(SAMPLE_CATALOGUE.read_text()
                             + "".join(d.model_dump_json() + "\n" for d in cran_docs))
        sample_queries = list(read_queries(SAMPLE_QUERIES).values())
        resources: list[Resource] = list(read_catalogue(catalogue))
        index = CatalogueIndex(resources)
        queries = sample_queries + cran_queries
        env = {"EDURANKER_BASE_MODEL": args.base_model, "EDURANKER_EMBEDDING_MODEL": args.base_model,
               "CROSS_ENCODER_PATH": str(folder), "EDURANKER_BACKEND": args.backend,
               "EDURANKER_ONNX_CACHE_DIR": str(work / "onnx"), "EDURANKER_LOG_LEVEL": "WARNING"}
        search: dict[str, dict] = {}
        with LocalStack(work / "stack", env=env) as stack:
            log(f"reranker on the bench version: {len(resources)} resources, Cranfield {cran_note}")
            stack.start_broker()
            stack.load_catalogue(catalogue)
            stack.start_service("reranker")
            stack.wait_ready("reranker", timeout_s=STARTUP_TIMEOUT_S)
            url = stack.url("reranker")
            with Client(reranker=url, timeout=10) as client:
                info = client.model_info()
            log(f"serving {info['version']} kind={info['kind']} backend={info['backend']} "
                f"({info['backend_selection']['reason']})")

            def point(n: int) -> dict:
                log(f"up to {requests} searches at {n} candidates")
                return measure_search(url, queries_with(index, queries, n), n, requests, args.budget_s)

            for n in (20, 50, 100):
                search[str(n)] = point(n)
            stack.stop_service("reranker")
            stack.env.pop("CROSS_ENCODER_PATH")
            log("restarting on version 0 (bm25 + dense)")
            stack.start_service("reranker")
            stack.wait_ready("reranker", timeout_s=STARTUP_TIMEOUT_S)
            with Client(reranker=url, timeout=10) as client:
                v0_info = client.model_info()
            search["v0_50"] = point(50)
        sample = [r for r in resources if not r.id.isdigit()]
        sets = {"catalogue": pair_sets(CatalogueIndex(sample), sample_queries, 50, 4 if args.quick else 8),
                "cranfield": pair_sets(CatalogueIndex([r for r in resources if r.id.isdigit()]),
                                       cran_queries, 50, 5) if cran_docs else []}
        backends = (info["backend"],) if args.quick else BACKENDS
        pairs = measure_pairs(folder, spec, sets, work / "onnx", backends, 1 if args.quick else 2)
        dense = dense_query_ms(args.base_model, sample_queries, spec.max_length)

    served = info["backend"]
    result: dict = {
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
    result |= {"v0_search_p50_ms_50": search["v0_50"]["client_ms"]["p50"],
               "v0_search_p95_ms_50": search["v0_50"]["client_ms"]["p95"],
               "v0_search_p99_ms_50": search["v0_50"]["client_ms"]["p99"]}
    result |= {
        "search": search,
        "pairs": pairs,
        "dense_query_ms": dense,
        "served": {"version": info["version"], "kind": info["kind"], "backend": served,
                   "backend_selection": info["backend_selection"], "v0_kind": v0_info["kind"]},
        "settings": {"base_model": args.base_model, "max_length": spec.max_length, "backend": args.backend,
                     "torch_threads": available_cores(), "requests_per_point": requests,
                     "budget_s_per_point": args.budget_s,
                     "client": "one sequential client, keep-alive, top_k=10",
                     "catalogue": f"{len(resources)} resources (sample catalogue + Cranfield: {cran_note})",
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
        + ", ".join(f"{k}={result[k]}" for k in ("pairs_per_s", "baseline_pairs_per_s", "search_p50_ms_50",
                                                   "search_p95_ms_50", "v0_search_p95_ms_50")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
