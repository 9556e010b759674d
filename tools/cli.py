"""`eduranker` / `python -m tools.cli`: run the local stack, load a catalogue, play test traffic."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from shared.logging import configure
from shared.settings import SettingsError
from tools.catalogue import CatalogueError
from tools.client import Client, Refused
from tools.collection import read_qrels, read_queries
from tools.people import People, like_rule

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CATALOGUE = ROOT / "data" / "sample_catalogue.jsonl"
SAMPLE_QUERIES = ROOT / "data" / "sample_queries.txt"


def cmd_run(args: argparse.Namespace) -> int:
    from tools.localstack import LocalStack, StackError, offline_defaults
    from tools.prometheus import LocalPrometheus, PrometheusError

    prometheus_bin = shutil.which(args.prometheus) if args.monitor else None
    if args.monitor and prometheus_bin is None:
        print(f"--monitor needs Prometheus: `{args.prometheus}` is not on PATH. Install it (Debian and "
              "Ubuntu: apt-get install prometheus; else https://prometheus.io/download/) or name the "
              "binary: make monitor PROMETHEUS=/path/to/prometheus", file=sys.stderr)
        return 2
    # Settings given in the environment win over the local defaults: EDURANKER_STORE_URL=mongodb://...
    # runs the loop on that MongoDB, EDURANKER_KAFKA_BOOTSTRAP on that Kafka.
    env = {name: value for name, value in os.environ.items() if name.startswith("EDURANKER_")}
    offline_defaults(env)
    stack = LocalStack(Path(args.workdir), env=env, fixed_ports=True)
    prometheus: LocalPrometheus | None = None
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("starting the embedded broker, the store and the four services...", flush=True)
        try:
            stack.start(catalogue=Path(args.catalogue), vectors=False)  # searches answer meanwhile
        except (StackError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        monitor = ""
        if prometheus_bin is not None:
            prometheus = LocalPrometheus(stack.workdir / "prometheus", stack.ports, port=args.prometheus_port,
                                         binary=prometheus_bin)
            try:
                prometheus.start()
            except PrometheusError as exc:
                print(f"{exc}\nIs port {args.prometheus_port} taken (Debian's prometheus service, say)? "
                      f"Choose another: make monitor PROMETHEUS_PORT=9091")
                return 1
            monitor = (f"\n  prometheus {prometheus.url}   (alerts: {prometheus.url}/alerts; "
                       "Grafana: docs/monitoring.md)")
        reranker, collector = stack.url("reranker"), stack.url("collector")
        print(f"""
EduRanker is up.
  reranker   {reranker}   (API docs: {reranker}/docs)
  collector  {collector}
  aggregator {stack.url('aggregator')}/stats
  trainer    {stack.url('trainer')}/admin/runs{monitor}
  logs       {stack.workdir / 'logs'}

Try:
  curl -s -X POST {reranker}/api/reranking/search-with-reranking \\
       -H 'Content-Type: application/json' \\
       -d '{{"query_text": "machine learning tutorial", "use_reranker": true, "top_k": 5}}'

Ctrl-C stops everything.""", flush=True)
        vectors = VectorsReport()
        while not stopping:
            vectors.show(stack.embedding())
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited with code {process.returncode}; see {stack.log(name)}")
                    return 1
            if prometheus is not None and prometheus.process and prometheus.process.poll() is not None:
                print(f"prometheus exited with code {prometheus.process.returncode}; "
                      f"see {prometheus.log_path}")
                return 1
            time.sleep(0.5)
        return 0
    finally:
        print("stopping...", flush=True)
        if prometheus is not None:
            prometheus.stop()
        stack.stop()


class VectorsReport:
    """Tells the person at the terminal how far the reranker's vectors got, every few seconds until
    they are all in, then once that they are."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self.last, self.done = every_s, 0.0, False

    def show(self, progress: dict | None) -> None:
        if self.done or progress is None or time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        if progress.get("complete"):
            self.done = True
            print(f"vectors: all {progress['resources']:,} in ({progress['from_store']:,} read from the "
                  f"store, {progress['encoded']:,} embedded); searches use the dense scorer for all.",
                  flush=True)
            return
        pace = ""
        if progress.get("texts_per_s"):
            pace = f" at {progress['texts_per_s']:.0f}/s, about {progress['eta_s'] / 60:.0f} min left"
        print(f"vectors: {progress['embedded']:,} of {progress['resources']:,} resources embedded{pace}; "
              "searches answer meanwhile (BM25 alone for the rest).", flush=True)


def cmd_load_catalogue(args: argparse.Namespace) -> int:
    from shared.settings import get_settings
    from tools.catalogue import load_catalogue

    loaded = asyncio.run(load_catalogue(get_settings().store_url, Path(args.path), replace=args.replace))
    removed = f", removed {loaded.removed} not in it" if args.replace else ""
    print(f"loaded {loaded.loaded} resources from {args.path}{removed}")
    return 0


class TrafficStopped(Exception):
    """The traffic cannot go on; the message says why."""


def play(args: argparse.Namespace, queries: list[tuple[str, str]],
         qrels: dict[str, dict[str, int]] | None) -> tuple[Counter[str], float]:
    """Searches and rates until `args.count` feedback are accepted; returns the counts and the
    start time."""
    rng = random.Random(args.seed)
    people = People.attentive(args.skip)
    sent: Counter[str] = Counter()
    started = time.monotonic()
    found_nothing = 0
    with Client(args.reranker, args.collector, timeout=30) as client:
        while sent["feedback"] < args.count:
            qid, query = rng.choice(queries)
            try:
                body = client.search(query, top_k=args.top_k)
            except Refused as exc:
                raise TrafficStopped(str(exc)) from None
            sent["searches"] += 1
            results = body["results"]
            found_nothing = 0 if results else found_nothing + 1
            if found_nothing >= max(100, 3 * len(queries)):
                raise TrafficStopped(f"the last {found_nothing} searches found nothing: do the queries "
                                     f"({args.queries}) match the catalogue the reranker serves?")
            if qrels is not None:
                liked = {r["resource_id"] for r in results
                         if qrels[qid].get(r["resource_id"], 0) >= args.min_relevance}
            else:
                liked = {r["resource_id"] for r in results if like_rule(query, r)}
            for position, label in people.rate([r["resource_id"] for r in results], liked, rng):
                if sent["feedback"] >= args.count:
                    break
                if args.rate > 0:  # paced from the start, so slow requests do not lower the rate
                    time.sleep(max(0.0, started + sent["feedback"] / args.rate - time.monotonic()))
                try:
                    client.feedback(body["inference_id"], results[position]["resource_id"], label,
                                    session_id=f"traffic-{args.seed}", is_test=args.mark_test)
                except Refused as exc:
                    sent["refused"] += 1
                    print(exc)
                    if sent["refused"] >= 10:
                        raise TrafficStopped("10 feedback refused: stopping") from None
                    continue
                sent["feedback"] += 1
                sent[label] += 1
    return sent, started


def cmd_traffic(args: argparse.Namespace) -> int:
    """Plays searches and likes/dislikes through the real HTTP API (the guide's test flow).

    The people are `People.attentive` (every result read, `--skip` of them left unrated); what
    they like comes from `like_rule`, or with `--qrels` from relevance judgments: a shown resource
    judged at least `--min-relevance` for the query is liked, any other one disliked (BEIR
    counts unjudged documents as not relevant). `--rate` paces the feedback, `--count` ends it.
    """
    try:
        queries = list(read_queries(Path(args.queries)).items())
        qrels = read_qrels(Path(args.qrels)) if args.qrels else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if qrels is not None:
        queries = [(qid, text) for qid, text in queries if qid in qrels]
        if not queries:
            print(f"no query in {args.queries} has judgments in {args.qrels}: the query ids must match")
            return 2
    if not queries:
        print(f"no query in {args.queries}: nothing to search", file=sys.stderr)
        return 2
    try:
        sent, started = play(args, queries, qrels)
    except httpx.RequestError as exc:
        print(f"cannot reach {exc.request.url}: {exc or type(exc).__name__}. Is the stack up? "
              "`make run` starts it; --reranker and --collector name other addresses.", file=sys.stderr)
        return 1
    except TrafficStopped as exc:
        print(exc, file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(" ".join(f"{k}={sent[k]}" for k in ("searches", "feedback", "like", "dislike", "refused")),
          f"elapsed_s={elapsed:.1f} feedback_per_s={sent['feedback'] / elapsed if elapsed else 0:.1f}")
    return 1 if sent["refused"] else 0


def bounded(kind: type[int] | type[float], low: float,
            below: float | None = None) -> Callable[[str], int | float]:
    """An argparse type that refuses a number outside [low, below) with a message saying so."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({kind.__name__})") from None
        if not math.isfinite(value) or value < low or (below is not None and value >= below):
            span = f"from {low} to below {below}" if below is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {span}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eduranker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the whole loop locally (embedded broker, SQLite)")
    run.add_argument("--workdir", default=str(ROOT / "var"))
    run.add_argument("--catalogue", default=str(SAMPLE_CATALOGUE))
    run.add_argument("--monitor", action="store_true",
                     help="also start Prometheus with deploy/prometheus's jobs and alerts (`make monitor`)")
    run.add_argument("--prometheus", default="prometheus", help="the Prometheus binary, for --monitor")
    run.add_argument("--prometheus-port", type=int, default=9090, help="its port on 127.0.0.1")
    run.set_defaults(func=cmd_run)
    load = sub.add_parser("load-catalogue", help="load resources from a JSONL or CSV file into the store")
    load.add_argument("path")
    load.add_argument("--replace", action="store_true",
                      help="make the catalogue exactly the file: remove every resource it does not have")
    load.set_defaults(func=cmd_load_catalogue)
    traffic = sub.add_parser("traffic", help="play searches and feedback through the HTTP API")
    traffic.add_argument("--reranker", default="http://127.0.0.1:8000")
    traffic.add_argument("--collector", default="http://127.0.0.1:8001")
    traffic.add_argument("--queries", default=str(SAMPLE_QUERIES),
                         help="a text file, one query a line, or a BEIR queries.jsonl")
    traffic.add_argument("--qrels", default=None,
                         help="BEIR qrels.tsv: like what is judged relevant, dislike the rest")
    traffic.add_argument("--min-relevance", type=int, default=1, help="lowest qrels score that is liked")
    traffic.add_argument("--count", type=bounded(int, 0), default=120, help="feedback to send")
    traffic.add_argument("--rate", type=bounded(float, 0.0), default=0.0,
                         help="feedback per second (0 = no limit)")
    traffic.add_argument("--top-k", type=bounded(int, 1), default=10)
    traffic.add_argument("--skip", type=bounded(float, 0.0, below=1.0), default=0.3,
                         help="share of shown results left unrated, from 0 to below 1")
    traffic.add_argument("--seed", type=int, default=0)
    traffic.add_argument("--mark-test", action="store_true", help="mark feedback as test (not trained on)")
    traffic.set_defaults(func=cmd_traffic)
    args = parser.parse_args(argv)
    try:
        configure("cli")
        logging.getLogger("httpx").setLevel(logging.WARNING)
        return args.func(args)
    except (CatalogueError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
