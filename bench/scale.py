"""A real catalogue: how a reranker replica starts, answers and follows updates at 10^4 to 10^6 resources.

For each size: synthetic resources (a 4-8 word title and a ~100-word description, the README's
JSONL layout) written to a fresh SQLite store with their vectors (embedded by the reranker itself
up to `--embed-up-to`, generated at random above it: embedding a million here would take hours;
the JSON says which), then a reranker process on version 0 started cold on them:

- cold start: process start to `/ready`, and to every vector in memory;
- RSS once every vector is in, and the index's own bytes per resource;
- search p50/p95 over HTTP (one sequential client, 50 candidates, version 0);
- an update: `POST /api/resources` of a new resource, then of a changed one, to the first search
  that finds it; and a resource written to the store by another process (`load-catalogue`), to
  the first search that finds it (the replica's watcher polls every `EDURANKER_WATCH_INTERVAL_S`).

Plus, once per run: embedding throughput against plain `SentenceTransformer.encode` on the same
texts (bench/embedding.py), and `--launcher N`: `python -m tools.cli run --catalogue FILE` on N
resources without stored vectors, to the moment it answers a search, with the progress it shows.

    .venv/bin/python bench/scale.py                      # 10^4, 10^5, 10^6 (about an hour here)
    .venv/bin/python bench/scale.py --sizes 10000 100000 --launcher 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.embedding import synthetic_resources, throughput  # noqa: E402
from shared.broker import free_port  # noqa: E402
from shared.ml.backends import onnx_cache  # noqa: E402
from shared.ml.embedder import load_encoder  # noqa: E402
from shared.ml.model import configure_torch_threads, load_embedder  # noqa: E402
from shared.settings import OFFLINE_BASE_MODEL, Settings  # noqa: E402
from shared.store import Resource, open_store  # noqa: E402
from tools.localstack import PORT_FIELDS, LocalStack, wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SEARCH = "/api/reranking/search-with-reranking"
BATCH = 5_000


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


def chunks(count: int, seed: int) -> Iterator[list[dict]]:
    for start in range(0, count, BATCH):
        yield synthetic_resources(min(BATCH, count - start), seed=seed + start, start=start)


async def fill_store(settings: Settings, count: int, vectors_id: str | None, dim: int) -> dict:
    """The catalogue, and (with `vectors_id`) a random unit vector for each resource under it."""
    from shared.ml.vectors import text_hash

    store = await open_store(settings.store_url)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    try:
        for rows in chunks(count, seed=1):
            resources = [Resource(**row) for row in rows]
            await store.upsert_resources(resources)
            if vectors_id is not None:
                generated = rng.standard_normal((len(resources), dim)).astype(np.float32)
                generated /= np.linalg.norm(generated, axis=1, keepdims=True)
                keyed = {text_hash(r.text): v for r, v in zip(resources, generated, strict=True)}
                await store.put_vectors(vectors_id, keyed)
    finally:
        await store.close()
    return {"seconds": round(time.perf_counter() - started, 1)}


def rss_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {f"p{p}": round(float(np.percentile(array, p)), 2) for p in (50, 95, 99)} | {"n": len(values)}


def queries(count: int, seed: int = 3) -> list[str]:
    words = [w for r in synthetic_resources(50, seed=seed) for w in r["description"].lower().split()
             if len(w) > 4]
    rng = random.Random(seed)
    return [" ".join(rng.sample(words, rng.randint(2, 4))).strip(".") for _ in range(count)]


def search_latency(url: str, count: int) -> dict:
    client_ms, server_ms = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for n, query in enumerate(queries(count + 5)):
            started = time.perf_counter()
            response = client.post(SEARCH, json={"query_text": query, "top_k": 10, "candidates": 50})
            response.raise_for_status()
            if n >= 5:  # the first few warm the connection and the caches
                client_ms.append((time.perf_counter() - started) * 1000)
                server_ms.append(response.json()["latency_ms"])
    return {"client_ms": percentiles(client_ms), "server_ms": percentiles(server_ms)}


def found_after(url: str, word: str, resource_id: str, started: float, limit_s: float = 60.0) -> float:
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.perf_counter() - started < limit_s:
            results = client.post(SEARCH, json={"query_text": word, "top_k": 5}).json()["results"]
            if any(r["resource_id"] == resource_id for r in results):
                return round(time.perf_counter() - started, 3)
            time.sleep(0.01)
    return float("inf")


def update_latency(stack: LocalStack, url: str, rounds: int) -> dict:
    """Seconds from a write to the first search that finds it: through this replica's API (added,
    then changed), and through the store by another process (this replica's watcher)."""
    added, changed, other = [], [], []
    for n in range(rounds):
        word = f"qzx{n}vek"
        resource = {"id": f"upd-{n}", "title": f"Update {word}",
                    "description": "A resource added during the run."}
        started = time.perf_counter()
        httpx.post(url + "/api/resources", json={"resources": [resource]}, timeout=60).raise_for_status()
        added.append(found_after(url, word, resource["id"], started))
        changed_word = f"wyk{n}oop"
        resource["title"] = f"Changed {changed_word}"
        started = time.perf_counter()
        httpx.post(url + "/api/resources", json={"resources": [resource]}, timeout=60).raise_for_status()
        changed.append(found_after(url, changed_word, resource["id"], started))
        elsewhere = Resource(id=f"ext-{n}", title=f"Elsewhere vub{n}rrt", description="Written by a loader.")
        started = time.perf_counter()
        asyncio.run(_upsert(stack.settings.store_url, elsewhere))
        other.append(found_after(url, f"vub{n}rrt", elsewhere.id, started))
    return {"api_added_s": percentiles(added), "api_changed_s": percentiles(changed),
            "store_write_s": percentiles(other), "watch_interval_s": stack.settings.watch_interval_s}


async def _upsert(store_url: str, resource: Resource) -> None:
    store = await open_store(store_url)
    try:
        await store.upsert_resources([resource])
    finally:
        await store.close()


def embedding_and_catalogue(url: str) -> dict:
    return httpx.get(url + "/api/reranking/info-modele", timeout=30).json()


def embedding(url: str) -> dict:
    return embedding_and_catalogue(url)["embedding"]


def one_size(size: int, args: argparse.Namespace, env: dict[str, str], vectors_id: str, dim: int) -> dict:
    embedded = size <= args.embed_up_to
    how = ("embedded by the reranker" if embedded
           else "generated (random unit vectors under the served identity)")
    result: dict = {"resources": size, "load_average_at_start": os.getloadavg(), "vectors": how}
    with tempfile.TemporaryDirectory(prefix=f"scale-{size}-") as tmp, \
            LocalStack(Path(tmp), env=dict(env)) as stack:
        stack.start_broker()
        log(f"{size:,}: writing the catalogue{'' if embedded else ' and generated vectors'} to the store")
        generated = None if embedded else vectors_id
        result["store_fill"] = asyncio.run(fill_store(stack.settings, size, generated, dim))
        starts = 2 if embedded else 1  # the first start embeds everything; the second reads it back
        for attempt in range(starts):
            started = time.perf_counter()
            stack.start_service("reranker")
            stack.wait_ready("reranker", timeout_s=600)
            ready_s = time.perf_counter() - started
            stack.wait_vectors(stall_s=600)
            vectors_s = time.perf_counter() - started
            url = stack.url("reranker")
            progress = embedding(url)
            if attempt == 0 and embedded:
                seconds = max(vectors_s - ready_s, 1e-9)
                encoded = progress["encoded"]
                result["embedding_in_service"] = {"seconds": round(seconds, 1), "encoded": encoded,
                                                  "texts_per_s": round(encoded / seconds, 1)}
                stack.stop_service("reranker")
        log(f"{size:,}: ready in {ready_s:.1f} s, every vector in after {vectors_s:.1f} s")
        info = httpx.get(url + "/api/reranking/info-modele", timeout=30).json()
        result["cold_start"] = {"ready_s": round(ready_s, 2), "vectors_in_s": round(vectors_s, 2),
                                "from_store": progress["from_store"], "encoded": progress["encoded"],
                                "backend": progress.get("backend")}
        memory = info["catalogue"]["memory_bytes"]
        result["memory"] = rss_mb(stack.processes["reranker"].pid) | {
            "index_bytes": memory, "index_bytes_per_resource": round(sum(memory.values()) / size, 1)}
        result["memory"]["rss_bytes_per_resource"] = round(result["memory"]["rss_mb"] * 2**20 / size, 1)
        log(f"{size:,}: {result['memory']}")
        result["search"] = search_latency(url, args.searches)
        log(f"{size:,}: search {result['search']['client_ms']}")
        result["update"] = update_latency(stack, url, args.updates)
        log(f"{size:,}: update {result['update']}")
        result["after_updates"] = embedding_and_catalogue(url)["catalogue"]
    return result


def launcher(size: int, env: dict[str, str], watch_s: float) -> dict:
    """`python -m tools.cli run --catalogue FILE`, no stored vector: time to a search answered, and
    what it shows the person meanwhile."""
    with tempfile.TemporaryDirectory(prefix="scale-launcher-") as tmp:
        catalogue = Path(tmp) / "catalogue.jsonl"
        with catalogue.open("w") as out:
            for rows in chunks(size, seed=1):
                out.writelines(json.dumps(row) + "\n" for row in rows)
        ports = {f"EDURANKER_{field.upper()}": str(free_port()) for field in PORT_FIELDS.values()}
        output = Path(tmp) / "run.log"
        started = time.perf_counter()
        with output.open("wb") as sink:
            command = [sys.executable, "-m", "tools.cli", "run", "--catalogue", str(catalogue),
                       "--workdir", str(Path(tmp) / "var")]
            process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                       env={**os.environ, **env, **ports}, start_new_session=True)
        try:
            wait_for(lambda: "Ctrl-C stops everything" in output.read_text() or process.poll() is not None,
                     600, what="the launcher's stack up")
            up_s = time.perf_counter() - started
            url = f"http://127.0.0.1:{ports['EDURANKER_RERANKER_PORT']}"
            response = httpx.post(url + SEARCH, json={"query_text": queries(1)[0], "top_k": 5}, timeout=60)
            answered_s = time.perf_counter() - started
            time.sleep(watch_s)  # the progress lines it prints meanwhile
            lines = [line for line in output.read_text().splitlines() if line.startswith("vectors:")]
            return {"resources": size, "up_s": round(up_s, 1), "first_search_s": round(answered_s, 1),
                    "first_search_status": response.status_code,
                    "progress_lines": lines[:3] + lines[-1:] if len(lines) > 3 else lines}
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--embed-up-to", type=int, default=10_000,
                        help="sizes up to this are embedded by the reranker; larger ones get generated "
                        "vectors")
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--launcher", type=int, default=20_000,
                        help="resources for the launcher check (0: skip)")
    parser.add_argument("--launcher-watch-s", type=float, default=30.0)
    parser.add_argument("--throughput-texts", type=int, default=512)
    parser.add_argument("--base-model", default=os.environ.get("EDURANKER_BASE_MODEL", OFFLINE_BASE_MODEL))
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sizes already in --out (rerun one size alone)")
    args = parser.parse_args()
    configure_torch_threads()
    # The embedder's ONNX graph is exported once per model and kept, like the vectors: every start
    # here reads the one the throughput run exported (a replica's is on the registry's volume).
    cache = Path(os.environ.get("EDURANKER_ONNX_CACHE_DIR", ROOT / "var" / "onnx-cache")).resolve()
    env = {"EDURANKER_BASE_MODEL": args.base_model, "EDURANKER_EMBEDDING_MODEL": args.base_model,
           "EDURANKER_ONNX_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    settings = Settings(base_model=args.base_model, embedding_model=args.base_model, onnx_cache_dir=cache)
    embedder = load_embedder(args.base_model, settings.max_length, "cpu")
    encoder = load_encoder(embedder, settings.embedding_backend, onnx_cache(settings))
    dim = int(embedder.get_embedding_dimension() or 384)
    result: dict = {"sizes": {}}
    if args.merge and args.out.exists():
        result = json.loads(args.out.read_text())
    result |= {"load_average_before": os.getloadavg(), "cores": len(os.sched_getaffinity(0)),
               "model": args.base_model, "embedding_backend": encoder.backend}
    texts = [f"{r['title']}. {r['description']}" for r in synthetic_resources(args.throughput_texts, seed=7)]
    backends = (encoder.backend,) if encoder.backend != "torch" else ()
    result["embedding_throughput"] = throughput(texts, args.base_model, onnx_cache(settings), backends)
    log(f"embedding: {result['embedding_throughput']['texts_per_s']}")
    del embedder
    for size in sorted(args.sizes):  # the largest last, alone: its memory is the one that matters
        result["sizes"][str(size)] = one_size(size, args, env, encoder.identity, dim)
        result["load_average_after_" + str(size)] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.launcher:
        result["launcher"] = launcher(args.launcher, env, args.launcher_watch_s)
        log(f"launcher: {result['launcher']}")
    result["load_average_after"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
