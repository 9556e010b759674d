"""Load test: concurrent searches and feedback for a fixed time against `make run`'s stack.

Starts the stack itself (embedded broker, SQLite, the four services, the sample catalogue, on free
ports) or, with --reranker/--collector, targets one already running. Reports per endpoint the
throughput, p50/p95/p99 latency and the error count (must be zero: the exit code is 1 otherwise),
and each service's memory (RSS) at the start and the end. Writes bench/results/loadtest.json.

Feedback is sent as test feedback (`is_test`), so a load test never trains a model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.cli import SAMPLE_CATALOGUE, SAMPLE_QUERIES  # noqa: E402
from tools.collection import read_queries  # noqa: E402
from tools.localstack import SERVICES, LocalStack, offline_defaults  # noqa: E402

SEARCH = "/api/reranking/search-with-reranking"


def service_processes(urls: dict[str, str]) -> dict[str, psutil.Process]:
    """The process listening on each service's port (an already running stack gives only URLs)."""
    ports = {urlparse(url).port: name for name, url in urls.items()}
    found: dict[str, psutil.Process] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports and conn.pid:
            found[ports[conn.laddr.port]] = psutil.Process(conn.pid)
    return found


def rss_mb(processes: dict[str, psutil.Process]) -> dict[str, float]:
    sizes = {}
    for name, process in processes.items():
        try:
            sizes[name] = round(process.memory_info().rss / 2**20, 1)
        except psutil.Error:
            sizes[name] = float("nan")
    return sizes


class Load:
    """Each client searches (version 0 unless the stack has trained), then rates two results."""

    def __init__(self, reranker: str, collector: str, queries: list[str], seconds: float) -> None:
        self.reranker, self.collector, self.queries, self.seconds = reranker, collector, queries, seconds
        self.latencies: dict[str, list[float]] = {"search": [], "feedback": []}
        self.errors: dict[str, list[str]] = {"search": [], "feedback": []}
        self.versions: set[str] = set()
        self.lock = threading.Lock()

    def note(self, endpoint: str, started: float, error: str | None = None) -> None:
        with self.lock:
            if error is None:
                self.latencies[endpoint].append(time.perf_counter() - started)
            else:
                self.errors[endpoint].append(error)

    def client(self, n: int, until: float) -> None:
        rng = random.Random(n)
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    response = http.post(self.reranker + SEARCH, json={
                        "query_text": rng.choice(self.queries), "use_reranker": True, "top_k": 10})
                except httpx.HTTPError as exc:
                    self.note("search", started, f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    self.note("search", started, f"{response.status_code}: {response.text[:200]}")
                    continue
                self.note("search", started)
                body = response.json()
                self.versions.add(body["model_version"])
                for result in rng.sample(body["results"], k=min(2, len(body["results"]))):
                    started = time.perf_counter()
                    try:
                        answer = http.post(self.collector + "/api/feedback", json={
                            "inference_id": body["inference_id"], "resource_id": result["resource_id"],
                            "feedback": rng.choice(("like", "dislike")), "session_id": f"loadtest-{n}",
                            "is_test": True})
                    except httpx.HTTPError as exc:
                        self.note("feedback", started, f"{type(exc).__name__}: {exc}")
                        continue
                    refused = f"{answer.status_code}: {answer.text[:150]}"
                    self.note("feedback", started, None if answer.status_code == 200 else refused)

    def run(self, clients: int) -> float:
        started = time.monotonic()
        threads = [threading.Thread(target=self.client, args=(n, started + self.seconds), daemon=True)
                   for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.monotonic() - started

    def report(self, elapsed: float) -> dict[str, dict[str, float]]:
        endpoints = {}
        for endpoint, times in self.latencies.items():
            ms = np.array(times) * 1000 if times else np.array([np.nan])
            endpoints[endpoint] = {
                "requests": len(times) + len(self.errors[endpoint]),
                "throughput_rps": round(len(times) / elapsed, 2),
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p95_ms": round(float(np.percentile(ms, 95)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2),
                "errors": len(self.errors[endpoint]),
            }
        return endpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--reranker", help="URL of a running reranker (with --collector): starts no stack")
    parser.add_argument("--collector", help="URL of a running collector")
    parser.add_argument("--workdir", help="folder for the started stack (default: a temporary one)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "loadtest.json"))
    args = parser.parse_args(argv)
    if bool(args.reranker) != bool(args.collector):
        parser.error("give both --reranker and --collector, or neither to start a stack")

    stack = None
    temp = None
    try:
        if args.reranker:
            urls = {"reranker": args.reranker.rstrip("/"), "collector": args.collector.rstrip("/")}
        else:
            env = {"EDURANKER_TRAIN_MIN_NEW_FEEDBACK": "1000000000"}  # version 0 throughout
            offline_defaults(env)
            temp = tempfile.TemporaryDirectory(prefix="eduranker-loadtest-")
            stack = LocalStack(Path(args.workdir or temp.name), env=env)
            print("starting the stack (broker, SQLite, four services, sample catalogue)...", flush=True)
            stack.start(catalogue=SAMPLE_CATALOGUE)
            urls = {name: stack.url(name) for name in SERVICES}
        processes = service_processes(urls)
        queries = list(read_queries(SAMPLE_QUERIES).values())
        warm = Load(urls["reranker"], urls["collector"], queries, seconds=min(3.0, args.duration))
        warm.run(1)  # first requests load lazily built parts; not measured
        rss_start = rss_mb(processes)
        load = Load(urls["reranker"], urls["collector"], queries, args.duration)
        print(f"playing {args.clients} clients for {args.duration:.0f} s...", flush=True)
        elapsed = load.run(args.clients)
        rss_end = rss_mb(processes)
    finally:
        if stack is not None:
            stack.stop()
        if temp is not None:
            temp.cleanup()

    endpoints = load.report(elapsed)
    errors = sum(e["errors"] for e in endpoints.values())
    result = {
        "duration_s": round(elapsed, 1), "clients": args.clients, "model_versions": sorted(load.versions),
        "base_model": os.environ.get("EDURANKER_BASE_MODEL", "(stack default)"),
        "stack": "started" if stack is not None else "given by URL",
        "endpoints": endpoints, "errors": errors,
        "error_samples": {k: v[:5] for k, v in load.errors.items() if v},
        "memory_mb": {name: {"rss_start": rss_start.get(name), "rss_end": rss_end.get(name),
                             "growth": round(rss_end[name] - rss_start[name], 1)}
                      for name in sorted(rss_end) if name in rss_start},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in endpoints.items():
        print(f"{name:9s} {figures['throughput_rps']:7.1f} req/s  p50 {figures['p50_ms']:7.1f} ms  "
              f"p95 {figures['p95_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms  errors {figures['errors']}")
    for name, memory in result["memory_mb"].items():
        print(f"{name:11s} RSS {memory['rss_start']} -> {memory['rss_end']} MB ({memory['growth']:+.1f})")
    print(f"wrote {output}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
