"""`eduranker` / `python -m shared.cli`: run the local stack, load a catalogue, play test traffic."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
import time
from pathlib import Path

import httpx

from shared.logging import configure

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CATALOGUE = ROOT / "data" / "sample_catalogue.jsonl"
SAMPLE_QUERIES = ROOT / "data" / "sample_queries.txt"


def cmd_run(args: argparse.Namespace) -> int:
    from shared.localstack import LocalStack, offline_defaults

    env: dict[str, str] = {}
    offline_defaults(env)
    stack = LocalStack(Path(args.workdir), env=env, fixed_ports=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("starting the embedded broker, the store and the four services...", flush=True)
        stack.start(catalogue=Path(args.catalogue))
        reranker, collector = stack.url("reranker"), stack.url("collector")
        print(f"""
EduRanker is up.
  reranker   {reranker}   (API docs: {reranker}/docs)
  collector  {collector}
  aggregator {stack.url('aggregator')}/stats
  trainer    {stack.url('trainer')}/admin/runs
  logs       {stack.workdir / 'logs'}

Try:
  curl -s -X POST {reranker}/api/reranking/search-with-reranking \\
       -H 'Content-Type: application/json' \\
       -d '{{"query_text": "machine learning tutorial", "use_reranker": true, "top_k": 5}}'

Ctrl-C stops everything.""", flush=True)
        while not stopping:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited with code {process.returncode}; see {stack.log(name)}")
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        print("stopping...", flush=True)
        stack.stop()


def cmd_load_catalogue(args: argparse.Namespace) -> int:
    from shared.catalogue import load_catalogue
    from shared.settings import get_settings

    count = asyncio.run(load_catalogue(get_settings().store_url, Path(args.path)))
    print(f"loaded {count} resources from {args.path}")
    return 0


def like_rule(query: str, result: dict) -> bool:
    """A simple stand-in for a person: like results that share most of the query's words."""
    words = {w for w in query.lower().split() if len(w) > 3}
    text = f"{result['title']} {result.get('description', '')} {result.get('subject', '')}".lower()
    return bool(words) and sum(w in text for w in words) / len(words) >= 0.5


def cmd_traffic(args: argparse.Namespace) -> int:
    """Plays searches and likes/dislikes through the real HTTP API (the guide's test flow)."""
    queries = [q.strip() for q in Path(args.queries).read_text().splitlines() if q.strip()]
    rng = random.Random(args.seed)
    sent = {"searches": 0, "feedback": 0, "like": 0, "dislike": 0}
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    with httpx.Client(timeout=30) as client:
        while sent["feedback"] < args.count:
            query = rng.choice(queries)
            response = client.post(f"{args.reranker}/api/reranking/search-with-reranking",
                                   json={"query_text": query, "use_reranker": True, "top_k": args.top_k})
            response.raise_for_status()
            body = response.json()
            sent["searches"] += 1
            for result in body["results"]:
                if sent["feedback"] >= args.count or rng.random() < args.skip:
                    continue
                label = "like" if like_rule(query, result) else "dislike"
                client.post(f"{args.collector}/api/feedback", json={
                    "inference_id": body["inference_id"], "resource_id": result["resource_id"],
                    "feedback": label, "session_id": f"traffic-{args.seed}", "is_test": args.mark_test,
                }).raise_for_status()
                sent["feedback"] += 1
                sent[label] += 1
                if interval:
                    time.sleep(interval)
    print(" ".join(f"{k}={v}" for k, v in sent.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eduranker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the whole loop locally (embedded broker, SQLite)")
    run.add_argument("--workdir", default=str(ROOT / "var"))
    run.add_argument("--catalogue", default=str(SAMPLE_CATALOGUE))
    run.set_defaults(func=cmd_run)
    load = sub.add_parser("load-catalogue", help="load resources from a JSONL or CSV file into the store")
    load.add_argument("path")
    load.set_defaults(func=cmd_load_catalogue)
    traffic = sub.add_parser("traffic", help="play searches and feedback through the HTTP API")
    traffic.add_argument("--reranker", default="http://127.0.0.1:8000")
    traffic.add_argument("--collector", default="http://127.0.0.1:8001")
    traffic.add_argument("--queries", default=str(SAMPLE_QUERIES))
    traffic.add_argument("--count", type=int, default=120, help="feedback to send")
    traffic.add_argument("--rate", type=float, default=0.0, help="feedback per second (0 = no limit)")
    traffic.add_argument("--top-k", type=int, default=10)
    traffic.add_argument("--skip", type=float, default=0.3, help="share of shown results left unrated")
    traffic.add_argument("--seed", type=int, default=0)
    traffic.add_argument("--mark-test", action="store_true", help="mark feedback as test (not trained on)")
    traffic.set_defaults(func=cmd_traffic)
    args = parser.parse_args(argv)
    configure("cli")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
