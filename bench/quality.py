"""Does it learn? Simulated users on a real IR test collection, through the real services.

For each seed: a fresh stack (embedded broker, SQLite, the four services), the collection's
corpus as catalogue, its queries split into feedback queries and held-out queries. Simulated
users search the feedback queries over HTTP and like relevant / dislike non-relevant results
according to the judgments, with position bias, noise and skips. Retraining happens when the
aggregator's policy fires; the harness never calls the trainer. After each new served version,
held-out queries are measured (nDCG@10, MRR@10, Recall@50). A second run flips the users'
labels: the gate must reject what they teach.

It measures the offline gate (EDURANKER_PROMOTION=offline: a candidate is promoted on its held-out
scores alone). The default, a challenger interleaved with the champion until users decide, is
measured by bench/online.py.

    .venv/bin/python bench/quality.py --dataset ../shared/datasets/cranfield --seeds 1 2 3
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.ml.evaluate import mrr_at, ndcg_at  # noqa: E402
from shared.settings import OFFLINE_BASE_MODEL  # noqa: E402
from tools.collection import read_qrels, read_queries, relevant  # noqa: E402
from tools.localstack import LocalStack, wait_for  # noqa: E402

log = logging.getLogger("quality")
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "cranfield"
RESULTS = ROOT / "bench" / "results"


@dataclass
class Collection:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: Path

    @classmethod
    def load(cls, folder: Path) -> Collection:
        """The queries that have a relevant resource, and their relevant resources (score > 0)."""
        qrels = relevant(read_qrels(folder / "qrels.tsv"))
        queries = read_queries(folder / "queries.jsonl")
        return cls({q: t for q, t in queries.items() if q in qrels}, qrels, folder / "corpus.jsonl")

    def split(self, seed: int, held_out_share: float = 0.5) -> tuple[list[str], list[str]]:
        ids = sorted(self.queries)
        random.Random(seed).shuffle(ids)
        cut = round(len(ids) * (1 - held_out_share))
        return sorted(ids[:cut]), sorted(ids[cut:])


@dataclass
class Users:
    """Simulated people: they look less far down the list, sometimes click wrong, often skip."""

    position_bias: float = 0.7
    noise: float = 0.05
    skip: float = 0.1
    flipped: bool = False
    rng: random.Random = field(default_factory=random.Random)

    def label(self, rank: int, relevant: bool) -> str | None:
        if self.rng.random() > 1.0 / rank**self.position_bias or self.rng.random() < self.skip:
            return None
        like = relevant != (self.rng.random() < self.noise)
        if self.flipped:
            like = not like
        return "like" if like else "dislike"


class Refusals:
    """Searches the reranker refused: each logged once with its query, status and message, then
    left out, so one odd query of a collection costs that query, not the run."""

    def __init__(self) -> None:
        self.queries: dict[str, dict] = {}

    def search(self, client: httpx.Client, reranker: str, qid: str, body: dict) -> dict | None:
        answer = client.post(f"{reranker}/api/reranking/search-with-reranking", json=body)
        if answer.status_code == 200:
            return answer.json()
        try:
            message = answer.json().get("detail")
        except ValueError:
            message = answer.text[:300]
        if qid not in self.queries:
            self.queries[qid] = {"status": answer.status_code, "message": message,
                                 "query_chars": len(body["query_text"])}
            log.warning("search refused: query %s (%d characters) got %d: %s; left out of this run",
                        qid, len(body["query_text"]), answer.status_code, message)
        return None


def measure(client: httpx.Client, reranker: str, collection: Collection, queries: list[str],
            use_reranker: bool, refusals: Refusals) -> dict[str, float]:
    ndcg, mrr, recall, version = [], [], [], None
    for qid in queries:
        body = refusals.search(client, reranker, qid, {
            "query_text": collection.queries[qid], "use_reranker": use_reranker, "top_k": 50,
            "candidates": 50})
        if body is None:
            continue
        rel = collection.qrels[qid]
        gains = [float(rel.get(r["resource_id"], 0)) for r in body["results"]]
        ndcg.append(ndcg_at(gains, [float(g) for g in rel.values()], 10))
        mrr.append(mrr_at(gains, 10))
        recall.append(sum(g > 0 for g in gains) / len(rel))
        version = body["model_version"]
    if not ndcg:
        raise SystemExit(f"the reranker refused every one of {len(queries)} queries; the first: "
                         f"{next(iter(refusals.queries.items()), None)}")
    return {"ndcg@10": statistics.mean(ndcg), "mrr@10": statistics.mean(mrr),
            "recall@50": statistics.mean(recall), "version": version, "queries": len(ndcg)}


def settled(client: httpx.Client, stack: LocalStack, sent: int) -> bool:
    """Every accepted feedback counted, no training pending, the reranker on the champion."""
    stats = client.get(f"{stack.url('aggregator')}/stats").json()
    if stats["counts"]["total"] < sent or stats["pending_request"]:
        return False
    champion = client.get(f"{stack.url('trainer')}/admin/versions").json().get("champion")
    served = client.get(f"{stack.url('reranker')}/api/reranking/info-modele").json()["version"]
    return champion is None or served == champion


def run_one(collection: Collection, seed: int, flipped: bool, args: argparse.Namespace,
            workdir: Path) -> dict:
    feedback_q, held_out = collection.split(seed)
    env = {"EDURANKER_BASE_MODEL": args.base_model, "EDURANKER_EMBEDDING_MODEL": args.embedding_model,
           "EDURANKER_TRAIN_MIN_NEW_FEEDBACK": str(args.min_new), "EDURANKER_SEED": str(seed),
           "EDURANKER_MAX_LENGTH": str(args.max_length), "EDURANKER_PROMOTION": "offline",
           "HF_HUB_OFFLINE": "1"}
    users = Users(args.position_bias, args.noise, args.skip, flipped, random.Random(seed))
    refusals = Refusals()
    started = time.perf_counter()
    with LocalStack(workdir, env=env) as stack, httpx.Client(timeout=120) as client:
        stack.start(catalogue=collection.corpus, ready_timeout_s=1200)
        startup_s = time.perf_counter() - started
        reranker, collector = stack.url("reranker"), stack.url("collector")
        bm25 = measure(client, reranker, collection, held_out, use_reranker=False, refusals=refusals)
        v0 = measure(client, reranker, collection, held_out, use_reranker=True, refusals=refusals)
        seen_v0 = measure(client, reranker, collection, feedback_q, use_reranker=True, refusals=refusals)
        log.info("seed=%d flipped=%s bm25=%.4f v0=%.4f", seed, flipped, bm25["ndcg@10"], v0["ndcg@10"])
        curve = [{"feedback": 0, **v0}]
        sent, served, next_check = 0, v0["version"], args.min_new
        for _ in range(args.passes):
            order = list(feedback_q)
            users.rng.shuffle(order)
            for qid in order:
                body = refusals.search(client, reranker, qid, {
                    "query_text": collection.queries[qid], "use_reranker": True, "top_k": 10})
                for result in body["results"] if body else ():
                    label = users.label(result["rank"], result["resource_id"] in collection.qrels[qid])
                    if label is None:
                        continue
                    client.post(f"{collector}/api/feedback", json={
                        "inference_id": body["inference_id"], "resource_id": result["resource_id"],
                        "feedback": label, "user_id": f"user-{qid}"}).raise_for_status()
                    sent += 1
                if sent >= next_check:
                    next_check += args.min_new
                    wait_for(lambda n=sent: settled(client, stack, n), args.train_timeout, 1.0,
                             "training to settle")
                    now = client.get(f"{reranker}/api/reranking/info-modele").json()["version"]
                    if now != served:
                        served = now
                        point = measure(client, reranker, collection, held_out, use_reranker=True,
                                        refusals=refusals)
                        curve.append({"feedback": sent, **point})
                        log.info("seed=%d version=%s feedback=%d ndcg=%.4f", seed, now, sent,
                                 point["ndcg@10"])
        wait_for(lambda n=sent: settled(client, stack, n), args.train_timeout, 1.0, "the last training")
        final = measure(client, reranker, collection, held_out, use_reranker=True, refusals=refusals)
        seen_final = measure(client, reranker, collection, feedback_q, use_reranker=True, refusals=refusals)
        runs = client.get(f"{stack.url('trainer')}/admin/runs", params={"limit": 200}).json()["runs"]
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


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


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

    from shared.ml.model import cross_scores, load_cross_encoder
    from shared.ml.retrieval import CatalogueIndex
    from tools.catalogue import read_catalogue

    resources = list(read_catalogue(collection.corpus))
    index = CatalogueIndex(resources)
    model = load_cross_encoder(args.base_model, args.max_length)
    values = []
    for qid in held_out[: args.base_queries]:
        top, _ = index.bm25_top(collection.queries[qid], 50)
        scores = cross_scores(model, collection.queries[qid], [resources[p].text for p in top])
        ranked = [float(collection.qrels[qid].get(resources[top[i]].id, 0)) for i in np.argsort(-scores)]
        values.append(ndcg_at(ranked, [float(g) for g in collection.qrels[qid].values()], 10))
    return statistics.mean(values)


def start_harness(dataset: Path) -> Collection | None:
    """The harnesses' logging, then the collection; None, having said why, when there is none."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "kafka", "shared"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not (dataset / "corpus.jsonl").exists():
        print(f"no BEIR collection at {dataset}: pass --dataset "
              "(a folder with corpus.jsonl, queries.jsonl, qrels.tsv)")
        return None
    return Collection.load(dataset)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--flipped-seeds", type=int, nargs="*", default=[1])
    parser.add_argument("--passes", type=int, default=1, help="times users go through the feedback queries")
    parser.add_argument("--min-new", type=int, default=100, help="EDURANKER_TRAIN_MIN_NEW_FEEDBACK")
    parser.add_argument("--position-bias", type=float, default=0.7)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--skip", type=float, default=0.1)
    parser.add_argument("--base-model", default=OFFLINE_BASE_MODEL)
    parser.add_argument("--embedding-model", default=OFFLINE_BASE_MODEL)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--base-queries", type=int, default=40, help="held-out queries for the base CE row")
    parser.add_argument("--train-timeout", type=float, default=1200)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "eval")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    args = parser.parse_args()
    collection = start_harness(args.dataset)
    if collection is None:
        return 2
    runs = []
    for flipped, seeds in ((False, args.seeds), (True, args.flipped_seeds)):
        for seed in seeds:
            workdir = args.workdir / f"{'flipped' if flipped else 'normal'}-{seed}"
            if workdir.exists():
                import shutil

                shutil.rmtree(workdir)
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
        "settings": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(runs, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "settings")}, indent=2))
    return 0 if math.isfinite(result["ndcg10_final"]) else 1


if __name__ == "__main__":
    sys.exit(main())
