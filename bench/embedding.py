"""How fast resource texts are embedded, and what the vector choices do to version 0's ranking.

Throughput: plain `SentenceTransformer.encode` (its defaults, batch 32) against the served
encoder (ONNX Runtime fp32 and int8, length-sorted batches, every core; torch in bf16, fast only
where the CPU has native bf16: `native_bf16` says whether this one has it) on the same synthetic
resources (a title and ~100 words, bench/scale.py's catalogue), in the same run.

Ranking (`--dataset`, a BEIR collection): version 0's nDCG@10 over every judged query through the
real pipeline code (BM25 top 50, then bm25 + dense + pseudo-relevance feedback fused), with the
vectors as torch computes them (float32), as the reranker keeps them (float16), as int8 ONNX
and bf16 torch compute them, and with a dense first stage (the dense top 20 added to BM25's 50 candidates).

    .venv/bin/python bench/embedding.py --dataset ../shared/datasets/cranfield
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.ml.embedder import load_encoder  # noqa: E402
from shared.ml.evaluate import ndcg_at  # noqa: E402
from shared.ml.model import configure_torch_threads, cpu_has_fast_bf16, load_embedder  # noqa: E402
from shared.ml.pipeline import RankingModel, version_zero  # noqa: E402
from shared.ml.retrieval import CatalogueIndex, VectorTable  # noqa: E402
from shared.settings import OFFLINE_BASE_MODEL, Settings  # noqa: E402
from shared.store import Resource  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "cranfield"
SAMPLE = ROOT / "data" / "sample_catalogue.jsonl"
CANDIDATES = 50
DENSE_CANDIDATES = 20


def synthetic_resources(count: int, seed: int = 0, start: int = 0) -> list[dict]:
    """Resources in the README's JSONL layout: a 4-8 word title and a 90-110 word description whose
    words follow the sample catalogue's frequencies (a realistic length and vocabulary shape)."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
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


def read_collection(folder: Path) -> tuple[list[Resource], dict[str, str], dict[str, dict[str, int]]]:
    resources = []
    for line in (folder / "corpus.jsonl").open():
        if line.strip():
            row = json.loads(line)
            text = row.get("text") or ""
            title = (row.get("title") or text[:80] or "untitled")[:500]
            resources.append(Resource(id=str(row["_id"]), title=title, description=text))
    queries = {str(r["_id"]): r["text"] for r in map(json.loads, (folder / "queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate((folder / "qrels.tsv").open()):
        parts = line.rstrip("\n").split("\t")
        if number and len(parts) == 3 and int(parts[2]) > 0:
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return resources, {q: t for q, t in queries.items() if q in qrels}, qrels


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
        gains = qrels[qid]
        scores.append(ndcg_at([gains.get(r, 0) for r in ranked], list(gains.values())))
    return round(float(np.mean(scores)), 4)


def ranking(dataset: Path, base_model: str, cache: Path) -> dict:
    resources, queries, qrels = read_collection(dataset)
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
    parser.add_argument("--out", type=Path, default=RESULTS / "embedding.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    configure_torch_threads()
    cache = Path(os.environ.get("EDURANKER_ONNX_CACHE_DIR", ROOT / "var" / "onnx-cache"))
    texts = [f"{r['title']}. {r['description']}" for r in synthetic_resources(args.texts, seed=7)]
    result: dict = {"load_average_before": os.getloadavg()}
    result["throughput"] = throughput(texts, args.base_model, cache, ("onnx", "onnx-int8", "torch-bf16"))
    result["native_bf16"] = cpu_has_fast_bf16()
    print(json.dumps(result["throughput"]), flush=True)
    if args.dataset.exists():
        result["ranking"] = ranking(args.dataset, args.base_model, cache)
        print(json.dumps(result["ranking"]), flush=True)
    else:
        result["ranking"] = f"no collection at {args.dataset}"
    result["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
