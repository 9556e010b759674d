"""Approximate nearest neighbours for a dense first stage: build time, query time, recall, memory.

EduRanker does not ship an ANN index: on Cranfield, adding the exact dense top 20 to BM25's 50
candidates moves version 0's nDCG@10 by +0.001 (bench/results/embedding.json), so none is kept.
This script is how that choice can be revisited on another catalogue: it measures the libraries
that install as wheels for Python 3.11 here (faiss-cpu, usearch; hnswlib has no wheel), whichever
are importable, against exact search, on clustered unit vectors of 384 dimensions (a mixture of
Gaussians, closer to text embeddings than uniform noise). Not in `make bench`: the libraries are
not dependencies. Install them beside the project to run it:

    .venv/bin/python -m pip install --target /tmp/annlib faiss-cpu usearch numkong
    PYTHONPATH=/tmp/annlib .venv/bin/python -m bench.studies.ann --sizes 100000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from bench.harness.measures import percentiles
from bench.harness.results import add_output_arguments, load_average, write_json

K = 20


def clustered(count: int, dim: int = 384, clusters: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    noise = rng.standard_normal((count, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, count)] + 0.6 * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def measure(name: str, build: Callable[[np.ndarray], object],
            search: Callable[[object, np.ndarray], np.ndarray], size_of: Callable[[object], int],
            data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    started = time.perf_counter()
    index = build(data)
    built = time.perf_counter() - started
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(search(index, query[None, :])[0])
        times.append((time.perf_counter() - started) * 1000)
    timed = {f"query_ms_{p}": ms for p, ms in percentiles(times, (50, 95), digits=3, count=False).items()}
    return {"build_s": round(built, 1), **timed, "recall@20": round(recall(found, truth), 3),
            "bytes_per_vector": round(size_of(index) / len(data), 1), "index": name}


def candidates() -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    try:
        import faiss

        faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))

        def hnsw_sq8(data: np.ndarray) -> object:
            index = faiss.IndexHNSWSQ(data.shape[1], faiss.ScalarQuantizer.QT_8bit, 32,
                                      faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.train(data)
            index.add(data)
            index.hnsw.efSearch = 64
            return index

        def ivf_sq8(data: np.ndarray) -> object:
            nlist = int(4 * np.sqrt(len(data)))
            index = faiss.index_factory(data.shape[1], f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
            index.train(data[np.random.default_rng(1).permutation(len(data))[:max(nlist * 40, 10_000)]])
            index.add(data)
            index.nprobe = 16
            return index

        def faiss_search(index: object, query: np.ndarray) -> np.ndarray:
            return index.search(query, K)[1]  # type: ignore[attr-defined]

        def faiss_size(index: object) -> int:
            return len(faiss.serialize_index(index))

        out["faiss HNSW32,SQ8 (ef 64)"] = (hnsw_sq8, faiss_search, faiss_size)
        out["faiss IVF,SQ8 (nprobe 16)"] = (ivf_sq8, faiss_search, faiss_size)
    except ImportError:
        pass
    try:
        from usearch.index import Index

        def usearch_i8(data: np.ndarray) -> object:
            index = Index(ndim=data.shape[1], metric="ip", dtype="i8", connectivity=16, expansion_add=80,
                          expansion_search=64)
            index.add(np.arange(len(data)), data)
            return index

        def usearch_search(index: object, query: np.ndarray) -> np.ndarray:
            return np.asarray(index.search(query[0], K).keys)[None, :]  # type: ignore[attr-defined]

        def usearch_size(index: object) -> int:
            return int(index.memory_usage)  # type: ignore[attr-defined]

        out["usearch HNSW16,i8"] = (usearch_i8, usearch_search, usearch_size)
    except ImportError:
        pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=200)
    add_output_arguments(parser, "ann")
    args = parser.parse_args()
    result: dict = {"load_average_before": load_average(), "k": K, "sizes": {}}
    found = candidates()
    if not found:
        print("neither faiss nor usearch is importable: see this script's docstring", file=sys.stderr)
        return 2
    for size in args.sizes:
        data = clustered(size)
        queries = clustered(args.queries, seed=9)
        started = time.perf_counter()
        truth = np.argsort(-(queries @ data.T), axis=1)[:, :K]
        exact_ms = (time.perf_counter() - started) * 1000 / len(queries)
        rows = [{"index": "exact (numpy, float32)", "query_ms_p50": round(exact_ms, 3), "recall@20": 1.0,
                 "bytes_per_vector": data.shape[1] * 4}]
        for name, (build, search, size_of) in found.items():
            rows.append(measure(name, build, search, size_of, data, queries, truth))
            print(json.dumps(rows[-1]), flush=True)
        result["sizes"][str(size)] = rows
    result["load_average_after"] = load_average()
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
