"""Load test: concurrent searches and feedback for a fixed time against `make run`'s stack.

Starts the stack itself (embedded broker, SQLite, the four services, the sample catalogue, on free
ports) or, with --reranker/--collector, targets one already running. Reports per endpoint the
throughput, p50/p95/p99 latency and the error count (must be zero: the exit code is 1 otherwise),
and each service's memory (RSS) at the start and the end. Writes bench/results/loadtest.json.

Feedback is sent as test feedback (`is_test`), so a load test never trains a model.

    .venv/bin/python -m bench.loadtest --duration 20      # `make loadtest` runs 60 s
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil

from bench.harness.measures import percentiles
from bench.harness.results import RESULTS, machine, write_json
from tools.cli import SAMPLE_CATALOGUE, SAMPLE_QUERIES
from tools.client import Client, Refused
from tools.collection import read_queries
from tools.localstack import SERVICES, LocalStack, offline_defaults

T = TypeVar("T")


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

    def timed(self, endpoint: str, call: Callable[[], T]) -> T | None:
        """`call`'s answer, its latency noted; None, the error noted instead, when it fails."""
        started = time.perf_counter()
        try:
            answer = call()
        except Refused as refused:
            self.note(endpoint, started, f"{refused.status}: {refused.text[:200]}")
            return None
        except httpx.HTTPError as exc:
            self.note(endpoint, started, f"{type(exc).__name__}: {exc}")
            return None
        self.note(endpoint, started)
        return answer

    def client(self, n: int, until: float) -> None:
        rng = random.Random(n)
        with Client(self.reranker, self.collector, timeout=60) as client:
            while time.monotonic() < until:
                body = self.timed("search", partial(client.search, rng.choice(self.queries), top_k=10))
                if body is None:
                    continue
                self.versions.add(body["model_version"])
                for result in rng.sample(body["results"], k=min(2, len(body["results"]))):
                    rate = partial(client.feedback, body["inference_id"], result["resource_id"],
                                   rng.choice(("like", "dislike")), session_id=f"loadtest-{n}", is_test=True)
                    self.timed("feedback", rate)

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
                **{f"{p}_ms": value for p, value in percentiles(ms, count=False).items()},
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
    parser.add_argument("--output", default=str(RESULTS / "loadtest.json"))
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
        "machine": machine(),
    }
    output = Path(args.output)
    write_json(output, result)
    for name, figures in endpoints.items():
        print(f"{name:9s} {figures['throughput_rps']:7.1f} req/s  p50 {figures['p50_ms']:7.1f} ms  "
              f"p95 {figures['p95_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms  errors {figures['errors']}")
    for name, memory in result["memory_mb"].items():
        print(f"{name:11s} RSS {memory['rss_start']} -> {memory['rss_end']} MB ({memory['growth']:+.1f})")
    print(f"wrote {output}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
