"""A real catalogue: how a reranker replica starts, answers and follows updates at 10^4 to 10^6 resources.

For each size: synthetic resources (a 4-8 word title and a ~100-word description, the README's
JSONL layout) written to a fresh SQLite store with their vectors (embedded by the reranker itself
up to `--embed-up-to`, generated at random above it: embedding a million here would take hours;
the JSON says which), then a reranker process on version 0 started cold on them:

- cold start: process start to `/ready`, and to every vector in memory;
- RSS once every vector is in, and the index's own bytes per resource;
- search p50/p95 over HTTP (one sequential client, 50 candidates, version 0);
- filtered search p50/p95, the same way, with a filter matching about 1 % of the catalogue (one
  subject of 20 and one type of 5) and one matching about 50 % (10 subjects of 20), facet counts
  of the four filterable fields included (`filtered_search`);
- an update: `POST /api/resources` of a new resource, then of a changed one, to the first search
  that finds it; and a resource written to the store by another process (`load-catalogue`), to
  the first search that finds it (the replica's watcher polls every `EDURANKER_WATCH_INTERVAL_S`);
- a removal: `DELETE /api/resources/{id}` to the first search that no longer finds it, and a
  removal written to the store by another process, as every other replica learns of it
  (`removal`).

Plus, once per run: embedding throughput against plain `SentenceTransformer.encode` on the same
texts (`bench.embedding`), and `--launcher N`: `python -m tools.cli run --catalogue FILE` on N
resources without stored vectors, to the moment it answers a search, with the progress it shows.

    .venv/bin/python -m bench.scale                      # 10^4, 10^5, 10^6 (about an hour here)
    .venv/bin/python -m bench.scale --sizes 10000 100000 --launcher 0
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

from bench.embedding import throughput
from bench.harness.collection import synthetic_resources
from bench.harness.measures import percentiles
from bench.harness.results import ROOT, VAR, add_output_arguments, load_average, write_json
from shared.messaging.broker import free_port
from shared.ml.ranking.backends import onnx_cache
from shared.ml.runtime.device import configure_torch_threads
from shared.ml.runtime.embedder import load_encoder
from shared.ml.runtime.loading import load_embedder
from shared.records import Resource
from shared.settings import OFFLINE_BASE_MODEL, Settings
from shared.store import open_store
from tools.cli import SAMPLE_CATALOGUE
from tools.client import Client, Refused
from tools.localstack import PORT_FIELDS, LocalStack, wait_for

BATCH = 5_000


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


def chunks(count: int, seed: int) -> Iterator[list[dict]]:
    for start in range(0, count, BATCH):
        yield synthetic_resources(min(BATCH, count - start), seed=seed + start, start=start)


async def fill_store(settings: Settings, count: int, vectors_id: str | None, dim: int) -> dict:
    """The catalogue, and (with `vectors_id`) a random unit vector for each resource under it."""
    from shared.ml.runtime.vectors import text_hash

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


def queries(count: int, seed: int = 3) -> list[str]:
    words = [w for r in synthetic_resources(50, seed=seed) for w in r["description"].lower().split()
             if len(w) > 4]
    rng = random.Random(seed)
    return [" ".join(rng.sample(words, rng.randint(2, 4))).strip(".") for _ in range(count)]


def search_latency(url: str, count: int) -> dict:
    client_ms, server_ms = [], []
    with Client(reranker=url, timeout=60) as client:
        for n, query in enumerate(queries(count + 5)):
            started = time.perf_counter()
            body = client.search(query, top_k=10, candidates=50)
            if n >= 5:  # the first few warm the connection and the caches
                client_ms.append((time.perf_counter() - started) * 1000)
                server_ms.append(body["latency_ms"])
    return {"client_ms": percentiles(client_ms), "server_ms": percentiles(server_ms)}


def found_after(url: str, word: str, resource_id: str, started: float, limit_s: float = 60.0) -> float:
    with Client(reranker=url, timeout=30) as client:
        while time.perf_counter() - started < limit_s:
            results = client.search(word, top_k=5)["results"]
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


FACETS = ["subject", "level", "type", "language"]


def filters_by_share() -> dict[str, dict[str, list[str]]]:
    """Filters on the synthetic catalogue's uniformly drawn fields (20 subjects, 5 types), by the
    share of resources they keep."""
    subjects = sorted({json.loads(line)["subject"] for line in SAMPLE_CATALOGUE.read_text().splitlines()
                       if line.strip()})
    return {"1%": {"subject": subjects[:1], "type": ["exercise"]}, "50%": {"subject": subjects[:10]}}


def filtered_search_latency(url: str, count: int) -> dict:
    """Like `search_latency`, with each filter and the facets of every filterable field; `kept` is the
    measured share of the query's matches the filter keeps (mean over the queries)."""
    out: dict = {}
    with Client(reranker=url, timeout=60) as client:
        for name, filters in filters_by_share().items():
            client_ms, server_ms, kept = [], [], []
            for n, query in enumerate(queries(count + 5)):
                started = time.perf_counter()
                body = client.search(query, top_k=10, candidates=50, filters=filters, facets=FACETS)
                if n >= 5:  # the first few warm the connection and the caches
                    client_ms.append((time.perf_counter() - started) * 1000)
                    server_ms.append(body["latency_ms"])
                    matched = client.search(query, top_k=1, use_reranker=False)["total"]
                    if matched:
                        kept.append(body["total"] / matched)
            out[name] = {"filters": filters, "kept": round(float(np.mean(kept)), 4) if kept else None,
                         "client_ms": percentiles(client_ms), "server_ms": percentiles(server_ms)}
    return out


def gone_after(url: str, word: str, resource_id: str, started: float, limit_s: float = 60.0) -> float:
    with Client(reranker=url, timeout=30) as client:
        while time.perf_counter() - started < limit_s:
            results = client.search(word, top_k=5)["results"]
            if all(r["resource_id"] != resource_id for r in results):
                return round(time.perf_counter() - started, 3)
            time.sleep(0.01)
    return float("inf")


def removal_latency(stack: LocalStack, url: str, rounds: int) -> dict:
    """Seconds from a removal to the first search that no longer finds the resource: through this
    replica's API, and through the store by another process (what every other replica sees)."""
    api, other = [], []
    for n in range(rounds):
        for how, seconds in (("api", api), ("store", other)):
            word = f"rmq{n}{how}zk"
            resource = {"id": f"rm-{how}-{n}", "title": f"Removal {word}", "description": "Soon removed."}
            httpx.post(url + "/api/resources", json={"resources": [resource]}, timeout=60).raise_for_status()
            found_after(url, word, resource["id"], time.perf_counter())
            started = time.perf_counter()
            if how == "api":
                httpx.delete(f"{url}/api/resources/{resource['id']}", timeout=60).raise_for_status()
            else:
                asyncio.run(_remove(stack.settings.store_url, resource["id"]))
            seconds.append(gone_after(url, word, resource["id"], started))
    return {"api_s": percentiles(api), "store_write_s": percentiles(other),
            "watch_interval_s": stack.settings.watch_interval_s}


async def _remove(store_url: str, resource_id: str) -> None:
    store = await open_store(store_url)
    try:
        await store.remove_resources([resource_id])
    finally:
        await store.close()


def embedding_and_catalogue(url: str) -> dict:
    with Client(reranker=url) as client:
        return client.model_info()


def embedding(url: str) -> dict:
    return embedding_and_catalogue(url)["embedding"]


def one_size(size: int, args: argparse.Namespace, env: dict[str, str], vectors_id: str, dim: int) -> dict:
    embedded = size <= args.embed_up_to
    how = ("embedded by the reranker" if embedded
           else "generated (random unit vectors under the served identity)")
    result: dict = {"resources": size, "load_average_at_start": load_average(), "vectors": how}
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
        info = embedding_and_catalogue(url)
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
        result["filtered_search"] = filtered_search_latency(url, args.searches)
        filtered = {name: part["client_ms"] for name, part in result["filtered_search"].items()}
        log(f"{size:,}: filtered search {filtered}")
        result["update"] = update_latency(stack, url, args.updates)
        log(f"{size:,}: update {result['update']}")
        result["removal"] = removal_latency(stack, url, args.updates)
        log(f"{size:,}: removal {result['removal']}")
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
            with Client(reranker=url, timeout=60) as client:
                try:
                    client.search(queries(1)[0], top_k=5)
                    status = 200
                except Refused as refused:
                    status = refused.status
            answered_s = time.perf_counter() - started
            time.sleep(watch_s)  # the progress lines it prints meanwhile
            lines = [line for line in output.read_text().splitlines() if line.startswith("vectors:")]
            return {"resources": size, "up_s": round(up_s, 1), "first_search_s": round(answered_s, 1),
                    "first_search_status": status,
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
    add_output_arguments(parser, "scale")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sizes already in --out (rerun one size alone)")
    args = parser.parse_args()
    configure_torch_threads()
    # The embedder's ONNX graph is exported once per model and kept, like the vectors: every start
    # here reads the one the throughput run exported (a replica's is on the registry's volume).
    cache = Path(os.environ.get("EDURANKER_ONNX_CACHE_DIR", VAR / "onnx-cache")).resolve()
    env = {"EDURANKER_BASE_MODEL": args.base_model, "EDURANKER_EMBEDDING_MODEL": args.base_model,
           "EDURANKER_ONNX_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    settings = Settings(base_model=args.base_model, embedding_model=args.base_model, onnx_cache_dir=cache)
    embedder = load_embedder(args.base_model, settings.max_length, "cpu")
    encoder = load_encoder(embedder, settings.embedding_backend, onnx_cache(settings))
    dim = int(embedder.get_embedding_dimension() or 384)
    result: dict = {"sizes": {}}
    if args.merge and args.out.exists():
        result = json.loads(args.out.read_text())
    result |= {"load_average_before": load_average(), "cores": len(os.sched_getaffinity(0)),
               "model": args.base_model, "embedding_backend": encoder.backend}
    texts = [f"{r['title']}. {r['description']}" for r in synthetic_resources(args.throughput_texts, seed=7)]
    backends = (encoder.backend,) if encoder.backend != "torch" else ()
    result["embedding_throughput"] = throughput(texts, args.base_model, onnx_cache(settings), backends)
    log(f"embedding: {result['embedding_throughput']['texts_per_s']}")
    del embedder
    for size in sorted(args.sizes):  # the largest last, alone: its memory is the one that matters
        result["sizes"][str(size)] = one_size(size, args, env, encoder.identity, dim)
        result["load_average_after_" + str(size)] = load_average()
        write_json(args.out, result)
    if args.launcher:
        result["launcher"] = launcher(args.launcher, env, args.launcher_watch_s)
        log(f"launcher: {result['launcher']}")
    result["load_average_after"] = load_average()
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
