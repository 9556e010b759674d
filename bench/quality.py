"""Does it learn? Simulated users on a real IR test collection, through the real services.

For each seed: a fresh stack (embedded broker, SQLite, the four services), the collection's
corpus as catalogue, its queries split into feedback queries and held-out queries. Simulated
users search the feedback queries over HTTP (`--passes` people each, three by default) and like
relevant / dislike non-relevant results according to the judgments, with position bias, noise and
skips. Retraining happens when the
aggregator's policy fires; the harness never calls the trainer. After each new served version,
held-out queries are measured (nDCG@10, MRR@10, Recall@50). A second run flips the users'
labels: the gate must reject what they teach.

It measures the offline gate (EDURANKER_PROMOTION=offline: a candidate is promoted on its held-out
scores alone). The default, a challenger interleaved with the champion until users decide, is
measured by `python -m bench.online`.

    .venv/bin/python -m bench.quality --dataset ../shared/datasets/cranfield --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import sys
import time
from pathlib import Path

from bench.harness.collection import DEFAULT_DATASET, Collection, start_harness
from bench.harness.measures import ndcg10, spread
from bench.harness.results import add_output_arguments, fresh, write_json
from bench.harness.stack import add_model_arguments, stack_env
from shared.ml.training.evaluate import mrr_at
from tools.client import Client, Refused
from tools.localstack import LocalStack, wait_for
from tools.people import People

log = logging.getLogger("quality")


class Refusals:
    """Searches the reranker refused: each logged once with its query, status and message, then
    left out, so one odd query of a collection costs that query, not the run."""

    def __init__(self) -> None:
        self.queries: dict[str, dict] = {}

    def search(self, client: Client, qid: str, query_text: str, **options: int | bool) -> dict | None:
        try:
            return client.search(query_text, **options)
        except Refused as refused:
            if qid not in self.queries:
                self.queries[qid] = {"status": refused.status, "message": refused.detail,
                                     "query_chars": len(query_text)}
                log.warning("search refused: query %s (%d characters) got %d: %s; left out of this run",
                            qid, len(query_text), refused.status, refused.detail)
            return None


def measure(client: Client, collection: Collection, queries: list[str], use_reranker: bool,
            refusals: Refusals) -> dict[str, float]:
    ndcg, mrr, recall, version = [], [], [], None
    for qid in queries:
        body = refusals.search(client, qid, collection.queries[qid], use_reranker=use_reranker, top_k=50,
                               candidates=50)
        if body is None:
            continue
        rel = collection.qrels[qid]
        shown = [r["resource_id"] for r in body["results"]]
        gains = [float(rel.get(r, 0)) for r in shown]
        ndcg.append(ndcg10(shown, rel))
        mrr.append(mrr_at(gains, 10))
        recall.append(sum(g > 0 for g in gains) / len(rel))
        version = body["model_version"]
    if not ndcg:
        raise SystemExit(f"the reranker refused every one of {len(queries)} queries; the first: "
                         f"{next(iter(refusals.queries.items()), None)}")
    return {"ndcg@10": statistics.mean(ndcg), "mrr@10": statistics.mean(mrr),
            "recall@50": statistics.mean(recall), "version": version, "queries": len(ndcg)}


def settled(client: Client, sent: int) -> bool:
    """Every accepted feedback counted, no training pending, the reranker on the champion."""
    stats = client.stats()
    if stats["counts"]["total"] < sent or stats["pending_request"]:
        return False
    champion = client.admin("GET", "/versions").get("champion")
    return champion is None or client.model_info()["version"] == champion


def people(args: argparse.Namespace, flipped: bool) -> People:
    """The users of this run: no silent searches, every list looked at (`--position-bias`,
    `--noise`, `--skip`)."""
    return People(bias=args.position_bias, noise=args.noise, skip=args.skip, silent=None, flipped=flipped)


def run_one(collection: Collection, seed: int, flipped: bool, args: argparse.Namespace,
            workdir: Path) -> dict:
    feedback_q, held_out = collection.split(seed)
    env = stack_env(args, seed, train_min_new_feedback=args.min_new, promotion="offline")
    users, rng = people(args, flipped), random.Random(seed)
    refusals = Refusals()
    started = time.perf_counter()
    with LocalStack(workdir, env=env) as stack, Client.of(stack, timeout=120) as client:
        stack.start(catalogue=collection.corpus, ready_timeout_s=1200)
        startup_s = time.perf_counter() - started
        bm25 = measure(client, collection, held_out, use_reranker=False, refusals=refusals)
        v0 = measure(client, collection, held_out, use_reranker=True, refusals=refusals)
        seen_v0 = measure(client, collection, feedback_q, use_reranker=True, refusals=refusals)
        log.info("seed=%d flipped=%s bm25=%.4f v0=%.4f", seed, flipped, bm25["ndcg@10"], v0["ndcg@10"])
        curve = [{"feedback": 0, **v0}]
        sent, served, next_check = 0, v0["version"], args.min_new
        for person in range(args.passes):
            order = list(feedback_q)
            rng.shuffle(order)
            for qid in order:
                body = refusals.search(client, qid, collection.queries[qid], use_reranker=True, top_k=10)
                shown = [r["resource_id"] for r in body["results"]] if body else []
                for position, label in users.rate(shown, collection.qrels[qid], rng):
                    client.feedback(body["inference_id"], shown[position], label,
                                    user_id=f"user-{qid}-{person}")
                    sent += 1
                if sent >= next_check:
                    next_check += args.min_new
                    wait_for(lambda n=sent: settled(client, n), args.train_timeout, 1.0, "training to settle")
                    now = client.model_info()["version"]
                    if now != served:
                        served = now
                        point = measure(client, collection, held_out, use_reranker=True, refusals=refusals)
                        curve.append({"feedback": sent, **point})
                        log.info("seed=%d version=%s feedback=%d ndcg=%.4f", seed, now, sent,
                                 point["ndcg@10"])
        wait_for(lambda n=sent: settled(client, n), args.train_timeout, 1.0, "the last training")
        final = measure(client, collection, held_out, use_reranker=True, refusals=refusals)
        seen_final = measure(client, collection, feedback_q, use_reranker=True, refusals=refusals)
        runs = client.admin("GET", "/runs", params={"limit": 200})["runs"]
    done = [r for r in runs if r["status"] in ("promoted", "rejected")]
    return {
        "seed": seed, "flipped": flipped, "feedback_queries": feedback_q, "held_out_queries": held_out,
        "bm25": bm25, "v0": v0, "final": final, "curve": curve,
        # The feedback queries asked again: what users taught, for the questions they asked.
        "seen_v0": seen_v0, "seen_final": seen_final, "feedback_sent": sent,
        "refused_queries": refusals.queries,
        "runs": [{k: r.get(k) for k in ("version", "status", "detail", "pairs", "started_at", "finished_at")}
                 for r in runs],
        "promoted": sum(r["status"] == "promoted" for r in done),
        "rejected": sum(r["status"] == "rejected" for r in done),
        "startup_s": startup_s, "total_s": time.perf_counter() - started,
    }


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        xs = [p["feedback"] for p in run["curve"]] + [run["feedback_sent"]]
        ys = [p["ndcg@10"] for p in run["curve"]] + [run["final"]["ndcg@10"]]
        style = "--" if run["flipped"] else "-"
        name = f"seed {run['seed']}" + (" flipped" if run["flipped"] else "")
        ax.step(xs, ys, style, where="post", label=name)
        ax.axhline(run["bm25"]["ndcg@10"], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("feedback given (through the API)")
    ax.set_ylabel("held-out nDCG@10")
    ax.set_title("Served version on held-out queries (dotted: BM25 alone)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def base_cross_encoder_ndcg(collection: Collection, held_out: list[str], args: argparse.Namespace) -> float:
    """The untrained base cross-encoder reranking BM25's top 50: the guide's starting point."""
    import numpy as np

    from shared.ml.ranking.retrieval import CatalogueIndex
    from shared.ml.runtime.loading import cross_scores, load_cross_encoder

    resources = collection.resources()
    index = CatalogueIndex(resources)
    model = load_cross_encoder(args.base_model, args.max_length)
    values = []
    for qid in held_out[: args.base_queries]:
        top, _ = index.bm25_top(collection.queries[qid], 50)
        scores = cross_scores(model, collection.queries[qid], [resources[p].text for p in top])
        values.append(ndcg10([resources[top[i]].id for i in np.argsort(-scores)], collection.qrels[qid]))
    return statistics.mean(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--flipped-seeds", type=int, nargs="*", default=[1])
    parser.add_argument("--passes", type=int, default=3,
                        help="people per feedback query: each pass, another person asks every one (one "
                             "person is one voice, and one voice alone never moves a ranking)")
    parser.add_argument("--min-new", type=int, default=100, help="EDURANKER_TRAIN_MIN_NEW_FEEDBACK")
    usual = People()
    parser.add_argument("--position-bias", type=float, default=usual.bias, help="examined: 1/rank^this")
    parser.add_argument("--noise", type=float, default=usual.noise, help="share rated against the judgments")
    parser.add_argument("--skip", type=float, default=usual.skip, help="share of examined results unrated")
    add_model_arguments(parser)
    parser.add_argument("--base-queries", type=int, default=40, help="held-out queries for the base CE row")
    parser.add_argument("--train-timeout", type=float, default=1200)
    add_output_arguments(parser, "quality", workdir="eval")
    args = parser.parse_args()
    collection = start_harness(args.dataset)
    runs = []
    for flipped, seeds in ((False, args.seeds), (True, args.flipped_seeds)):
        for seed in seeds:
            workdir = fresh(args.workdir / f"{'flipped' if flipped else 'normal'}-{seed}")
            runs.append(run_one(collection, seed, flipped, args, workdir))
            log.info("done seed=%d flipped=%s final=%.4f", seed, flipped, runs[-1]["final"]["ndcg@10"])
    normal = [r for r in runs if not r["flipped"]]
    flipped_runs = [r for r in runs if r["flipped"]]
    base = base_cross_encoder_ndcg(collection, normal[0]["held_out_queries"], args)
    gains = [r["final"]["ndcg@10"] - r["v0"]["ndcg@10"] for r in normal]
    result = {
        "dataset": str(args.dataset),
        "ndcg10_bm25": statistics.mean(r["bm25"]["ndcg@10"] for r in normal),
        "ndcg10_base": base,
        "ndcg10_v0": statistics.mean(r["v0"]["ndcg@10"] for r in normal),
        "ndcg10_final": statistics.mean(r["final"]["ndcg@10"] for r in normal),
        "spread": {"bm25": spread([r["bm25"]["ndcg@10"] for r in normal]),
                   "v0": spread([r["v0"]["ndcg@10"] for r in normal]),
                   "final": spread([r["final"]["ndcg@10"] for r in normal]),
                   "final_minus_v0": spread(gains),
                   "seen_final_minus_v0": spread([r["seen_final"]["ndcg@10"] - r["seen_v0"]["ndcg@10"]
                                                  for r in normal])},
        "ndcg10_seen_v0": statistics.mean(r["seen_v0"]["ndcg@10"] for r in normal),
        "ndcg10_seen_final": statistics.mean(r["seen_final"]["ndcg@10"] for r in normal),
        "rounds": statistics.mean(len(r["curve"]) - 1 for r in normal),
        "feedback_used": statistics.mean(r["feedback_sent"] for r in normal),
        "never_below_bm25": all(p["ndcg@10"] >= r["bm25"]["ndcg@10"] for r in runs for p in r["curve"]),
        "gate_rejected_flipped": bool(flipped_runs) and all(
            r["promoted"] == 0 and r["final"]["version"] == "v0" for r in flipped_runs),
        "refused_queries": {qid: info for r in runs for qid, info in r["refused_queries"].items()},
        "people": {"normal": people(args, False).parameters(), "flipped": people(args, True).parameters()},
        "settings": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
    }
    write_json(args.out, result)
    plot(runs, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "settings")}, indent=2))
    return 0 if math.isfinite(result["ndcg10_final"]) else 1


if __name__ == "__main__":
    sys.exit(main())
