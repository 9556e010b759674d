"""How fast resource texts are embedded, and what the vector choices do to version 0's ranking.

Throughput: plain `SentenceTransformer.encode` (its defaults, batch 32) against the served
encoder (ONNX Runtime fp32 and int8, length-sorted batches, every core; torch in bf16, fast only
where the CPU has native bf16: `native_bf16` says whether this one has it) on the same synthetic
resources (a title and ~100 words, `bench.scale`'s catalogue), in the same run.

Ranking (`--dataset`, a BEIR collection): version 0's nDCG@10 over every judged query through the
real pipeline code (BM25 top 50, then bm25 + dense + pseudo-relevance feedback fused), with the
vectors as torch computes them (float32), as the reranker keeps them (float16), as int8 ONNX
and bf16 torch compute them, and with a dense first stage (the dense top 20 added to BM25's 50 candidates).

    .venv/bin/python -m bench.embedding --dataset ../shared/datasets/cranfield
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness.collection import DEFAULT_DATASET, Collection, synthetic_resources
from bench.harness.measures import ndcg10
from bench.harness.results import VAR, add_output_arguments, load_average, write_json
from shared.ml.ranking.pipeline import RankingModel, version_zero
from shared.ml.ranking.retrieval import CatalogueIndex, VectorTable
from shared.ml.runtime.device import configure_torch_threads, cpu_has_fast_bf16
from shared.ml.runtime.embedder import auto_backend, load_encoder
from shared.ml.runtime.loading import load_embedder
from shared.settings import OFFLINE_BASE_MODEL, Settings

CANDIDATES = 50
DENSE_CANDIDATES = 20


def throughput(texts: list[str], base_model: str, cache: Path, backends: tuple[str, ...]) -> dict:
    """Texts per second: plain encode, then each served backend, round-robin best of two."""
    embedder = load_embedder(base_model, 128, "cpu")
    encoders = {b: load_encoder(embedder, b, cache) for b in backends}
    runs = {"plain_encode": lambda: embedder.encode(texts, convert_to_numpy=True)}
    runs |= {b: (lambda e=e: e(texts)) for b, e in encoders.items() if e.backend == b}
    embedder.encode(texts[:16])  # warm-up: graph optimisation, allocations
    for encoder in encoders.values():
        encoder(texts[:16])
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(2):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    per_s = {name: round(len(texts) / seconds, 1) for name, seconds in best.items()}
    return {"texts": len(texts), "texts_per_s": per_s,
            "speedup": {n: round(v / per_s["plain_encode"], 2) for n, v in per_s.items()},
            "unavailable": {b: e.reason for b, e in encoders.items() if e.backend != b}}


def ndcg(model: RankingModel, index: CatalogueIndex, queries: dict[str, str],
         qrels: dict[str, dict[str, int]], dense_candidates: int = 0,
         exact: np.ndarray | None = None) -> float:
    """Mean nDCG@10 of the served ranking; `dense_candidates` adds the dense top k (exact search over
    `exact`, the float32 vectors) to BM25's candidates."""
    scores = []
    for qid, query in queries.items():
        positions, bm25 = index.bm25_top(query, CANDIDATES)
        if dense_candidates and exact is not None:
            vector = model.query_vector(query)
            extra = np.argsort(-(exact @ vector))[:dense_candidates]
            positions = np.unique(np.concatenate([positions, extra]))
            bm25 = index.bm25_all(query)[positions]
        if not positions.size:
            scores.append(0.0)
            continue
        fused = model.score(index, query, positions, bm25)["fused"]
        ranked = [index.resources[p].id for p in positions[np.argsort(-fused, kind="stable")][:10]]
        scores.append(ndcg10(ranked, qrels[qid]))
    return round(float(np.mean(scores)), 4)


def ranking(dataset: Path, base_model: str, cache: Path) -> dict:
    collection = Collection.load(dataset)
    resources, queries, qrels = collection.resources(), collection.queries, collection.qrels
    settings = Settings(base_model=base_model, embedding_model=base_model)
    model = RankingModel.load(version_zero(settings), None, "cpu")
    assert model.embedder is not None
    texts = [r.text for r in resources]
    fp32 = model.embed_texts(texts)
    index = CatalogueIndex(resources)
    out: dict = {"dataset": dataset.name, "queries": len(queries), "resources": len(resources)}

    exact = VectorTable(fp32.shape[1], len(fp32))
    exact.matrix = fp32.copy()  # float32 rows: the reference
    exact.present[:] = True
    index.vectors = exact
    out["ndcg@10_fp32"] = ndcg(model, index, queries, qrels)
    index.vectors = VectorTable.full(fp32)  # float16, as served
    out["ndcg@10_fp16_served"] = ndcg(model, index, queries, qrels)
    out["ndcg@10_dense_first_stage"] = ndcg(model, index, queries, qrels, DENSE_CANDIDATES, fp32)
    for backend, name in (("onnx-int8", "ndcg@10_int8"), ("torch-bf16", "ndcg@10_bf16")):
        encoder = load_encoder(model.embedder, backend, cache)
        if encoder.backend == backend:
            model.encoder = encoder
            index.vectors = VectorTable.full(encoder(texts))
            out[name] = ndcg(model, index, queries, qrels)
            model.encoder = None
    bm25 = RankingModel(spec=model.spec.model_copy(update={"weights": {"bm25": 1.0}}))
    out["ndcg@10_bm25_only"] = ndcg(bm25, index, queries, qrels)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--texts", type=int, default=512, help="synthetic resources for the throughput")
    parser.add_argument("--base-model", default=OFFLINE_BASE_MODEL)
    add_output_arguments(parser, "embedding")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    configure_torch_threads()
    cache = Path(os.environ.get("EDURANKER_ONNX_CACHE_DIR", VAR / "onnx-cache"))
    texts = [f"{r['title']}. {r['description']}" for r in synthetic_resources(args.texts, seed=7)]
    result: dict = {"load_average_before": load_average()}
    result["throughput"] = throughput(texts, args.base_model, cache, ("onnx", "onnx-int8", "torch-bf16"))
    result["native_bf16"] = cpu_has_fast_bf16()
    embedder = load_embedder(args.base_model, Settings().max_length, "cpu")
    with tempfile.TemporaryDirectory(prefix="bench-embedding-auto-") as fresh:  # what a first start decides
        backend, reason, _ = auto_backend(embedder, Path(fresh))
    result["auto"] = {"backend": backend, "reason": reason}
    print(json.dumps(result["throughput"]), flush=True)
    if args.dataset.exists():
        result["ranking"] = ranking(args.dataset, args.base_model, cache)
        print(json.dumps(result["ranking"]), flush=True)
    else:
        result["ranking"] = f"no collection at {args.dataset}"
    result["load_average_after"] = load_average()
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
