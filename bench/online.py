"""Let users decide: simulated people play a BEIR collection through the real services.

Two stacks per seed (embedded broker, SQLite, the four services, the corpus as catalogue):

- **pairs**: rankers whose true difference the judgments give (version 0 against BM25 alone,
  and against itself without pseudo-relevance feedback, 0.02 nDCG@10 apart on Cranfield, each
  way round: once as the champion, once as the challenger) are interleaved on every search
  until the aggregator's test decides. The right winner is the list the judgments say these
  people like more (their attention read into the judgments); nDCG@10's verdict is kept
  beside it. The impressions the services logged are then replayed, resampled, to compare
  the impressions interleaving needs to decide with what an A/B test on likes per search
  needs, both judged by the product's rule at the same error rate, with the product's minimum
  of impressions and without (bench/online_summary.py sums them up).
  Then safety: a challenger trained on flipped labels must be retired by users, and a
  degraded champion promoted by an operator must be rolled back by them.
- **loop**: a stream of searches where queries repeat as real traffic does (Zipf popularity,
  new queries arriving; a quarter of the queries are held out and never asked). Training fires
  only from the aggregator's policy, promotions only from users' decisions. What users see is
  scored by the judgments: nDCG@10 of the lists actually shown, over the last quarter of the
  stream, against version 0's on the same searches.

    .venv/bin/python bench/online.py --dataset ../shared/datasets/cranfield --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.online_summary import aggregate, paired_gain  # noqa: E402
from bench.quality import Collection, start_harness  # noqa: E402
from bench.simulate import (  # noqa: E402
    Impression,
    People,
    Stream,
    ab_normal_run,
    ab_run,
    expected_likes,
    fixed_horizon,
    interleaving_run,
    ndcg10,
    summary,
)
from shared.interleaving import CHALLENGER_PREFIX  # noqa: E402
from shared.ml.pipeline import PipelineSpec, version_zero  # noqa: E402
from shared.ml.registry import Registry  # noqa: E402
from shared.sequential import SequentialTest  # noqa: E402
from shared.settings import OFFLINE_BASE_MODEL  # noqa: E402
from shared.store import ModelVersion, open_store  # noqa: E402
from tools.localstack import LocalStack, wait_for  # noqa: E402

log = logging.getLogger("online")
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "cranfield"
RESULTS = ROOT / "bench" / "results"


class Site:
    """The running services as the simulated people and the operator reach them."""

    def __init__(self, stack: LocalStack, collection: Collection, people: People) -> None:
        self.stack, self.collection, self.people = stack, collection, people
        self.client = httpx.Client(timeout=120)
        self.searches: list[dict] = []  # every search played: query, inference id, shown, nDCG, latency

    def search(self, qid: str) -> dict:
        started = time.perf_counter()
        response = self.client.post(f"{self.stack.url('reranker')}/api/reranking/search-with-reranking",
                                    json={"query_text": self.collection.queries[qid], "top_k": 10})
        response.raise_for_status()
        body = response.json()
        body["client_ms"] = (time.perf_counter() - started) * 1000
        return body

    def play(self, qid: str, people: People | None = None) -> dict:
        """One person searches and rates; returns what was shown and how good it was."""
        body = self.search(qid)
        shown = [r["resource_id"] for r in body["results"]]
        for position, label in (people or self.people).rate(shown, self.collection.qrels[qid]):
            self.client.post(f"{self.stack.url('collector')}/api/feedback", json={
                "inference_id": body["inference_id"], "resource_id": shown[position], "feedback": label,
                "user_id": f"person-{len(self.searches)}"}).raise_for_status()
        played = {"qid": qid, "inference_id": body["inference_id"], "shown": shown,
                  "ndcg": ndcg10(shown, self.collection.qrels[qid]), "version": body["model_version"],
                  "ms": body["client_ms"]}
        self.searches.append(played)
        return played

    def admin(self, method: str, path: str, **kwargs: object) -> dict:
        response = self.client.request(method, f"{self.stack.url('trainer')}/admin{path}", **kwargs)
        response.raise_for_status()
        return response.json()

    def experiments(self) -> list[dict]:
        return self.admin("GET", "/experiments", params={"limit": 200})["experiments"]

    def serving(self) -> dict:
        return self.client.get(f"{self.stack.url('reranker')}/api/reranking/info-modele").json()

    def wait_serving(self, champion: str, challenger: str | None) -> None:
        def ok() -> bool:
            info = self.serving()
            served = (info.get("experiment") or {}).get("challenger")
            return info["version"] == champion and served == challenger

        wait_for(ok, 300, 0.3, f"{champion} served with challenger {challenger}")

    def champion_alone(self, qids: list[str], tries: int = 5) -> dict[str, float]:
        """nDCG@10 of the champion alone on `qids`: a running experiment is stopped first, and the
        measure is taken again if a training run's challenger started interleaving meanwhile."""
        for _ in range(tries):
            if self.serving().get("experiment"):
                self.admin("POST", "/experiments/stop")
                self.wait_serving(self.serving()["version"], None)
            answers = {q: self.search(q) for q in qids}
            if not any(key.startswith(CHALLENGER_PREFIX) for body in answers.values()
                       for result in body["results"][:1] for key in result["scores"]):
                return {q: ndcg10([r["resource_id"] for r in body["results"]], self.collection.qrels[q])
                        for q, body in answers.items()}
        raise RuntimeError(f"a challenger kept interleaving the champion's answers ({tries} tries)")

    def until_decided(self, experiment_id: str, stream: Stream, cap: int,
                      people: People | None = None) -> dict:
        """Plays the stream until users decide the experiment (or `cap` searches): its record."""
        for step in range(cap):
            self.play(stream.at(step), people)
            if step % 25 == 24:
                found = next(e for e in self.experiments() if e["experiment_id"] == experiment_id)
                if found["status"] == "ended":
                    return found
        return next(e for e in self.experiments() if e["experiment_id"] == experiment_id)

    def impressions(self, experiment_id: str) -> list[Impression]:
        """The experiment's interleaved searches, as the services logged them."""
        ids = [s["inference_id"] for s in self.searches]

        async def read() -> dict:
            store = await open_store(self.stack.settings.store_url)
            try:
                return await store.get_inferences(ids)
            finally:
                await store.close()

        by_id = {s["inference_id"]: s for s in self.searches}
        out = []
        for inference in asyncio.run(read()).values():
            record = inference.interleaving
            if record is None or record.experiment_id != experiment_id:
                continue
            out.append(Impression(query=by_id[inference.inference_id]["qid"],
                                  shown=tuple(r.resource_id for r in inference.results),
                                  teams=tuple(r.team or "" for r in inference.results),
                                  champion=tuple(record.champion_ranking),
                                  challenger=tuple(record.challenger_ranking),
                                  shares=tuple(r.share for r in inference.results)))
        return out

    def add_version(self, spec: PipelineSpec) -> PipelineSpec:
        """A version written beside the trainer's, as an operator would import one, and indexed."""
        registry = Registry(self.stack.settings.model_dir)
        spec = spec.model_copy(update={"version": registry.next_version()})
        registry.write_version(spec.version, spec.save)

        async def index() -> None:
            store = await open_store(self.stack.settings.store_url)
            try:
                await store.save_model_version(ModelVersion(version=spec.version, location=spec.version,
                                                            status="rejected", base_model=spec.base_model))
            finally:
                await store.close()

        asyncio.run(index())
        return spec


def truth(impressions: list[Impression], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Each ranker by the judgments on the experiment's own traffic: nDCG@10, and the likes per
    search the simulated people give it (the judgments read with their attention)."""
    people = People()
    out = {side: statistics.mean(ndcg10(getattr(i, side), qrels[i.query]) for i in impressions)
           for side in ("champion", "challenger")}
    for side in ("champion", "challenger"):
        out[f"{side}_likes"] = statistics.mean(expected_likes(people, getattr(i, side), qrels[i.query])
                                               for i in impressions)
    return out


def better(judged: dict[str, float], key: str = "") -> str:
    return "challenger" if judged["challenger" + key] > judged["champion" + key] else "champion"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def compare(site: Site, name: str, experiment: dict, args: argparse.Namespace, seed: int) -> dict:
    """The real experiment's outcome, then interleaving against A/B on its replayed impressions.

    Both replays use the product's rule (testing by betting, `shared/sequential.py`): interleaving
    on each impression's net credit, the A/B test on the difference of likes of a pair of searches,
    one shown each ranker's list alone. Each replay is counted with the product's minimum before
    any decision and without it, so that what each method needs is not capped by a policy. The
    normal-mixture A/B test, its spread set to the true difference, is kept beside as a reference."""
    impressions = site.impressions(experiment["experiment_id"])
    qrels = site.collection.qrels
    judged = truth(impressions, qrels)
    # What users prefer is what they see: the likes the judgments predict for each list. nDCG@10
    # weighs ranks 6 to 10 more than these users look at them, and may disagree on close pairs.
    right, right_ndcg = better(judged, "_likes"), better(judged)
    test = SequentialTest(experiment["alpha"])
    rng = random.Random(seed)
    people = People(rng=rng)
    horizon = fixed_horizon(impressions, qrels, rng, people)
    tau = abs(horizon["like_rate_challenger"] - horizon["like_rate_champion"]) or 0.01
    floor, cap = experiment["min_impressions"], args.resample_cap
    interleaving = [interleaving_run(impressions, qrels, test, floor, rng, people, cap)
                    for _ in range(args.resamples)]
    ab = [ab_run(impressions, qrels, test, floor, rng, people, cap) for _ in range(args.resamples)]
    ab_normal = [ab_normal_run(impressions, qrels, test.alpha, tau, floor, rng, people, cap)
                 for _ in range(args.resamples)]
    decision = experiment["decision"] if experiment["decision"] in ("promote", "retire") else None
    return {"pair": name, "experiment": experiment, "logged_impressions": len(impressions),
            "by_judgments": judged, "right_winner": right, "right_winner_ndcg10": right_ndcg,
            "relative_gap": relative_gap(judged),
            "decided": decision, "decided_right": None if decision is None else (
                (decision == "promote") == (right == "challenger")),
            "decided_right_ndcg10": None if decision is None else (
                (decision == "promote") == (right_ndcg == "challenger")),
            "fixed_horizon_80_power": horizon,
            **{f"resampled_{method}": {"no_floor": summary(runs, right, False, cap),
                                       "with_floor": summary(runs, right, True, cap)}
               for method, runs in (("interleaving", interleaving), ("ab", ab), ("ab_normal", ab_normal))}}


def relative_gap(judged: dict[str, float]) -> float:
    """How far apart the two lists are in likes per search, relative to the champion's."""
    return (judged["challenger_likes"] - judged["champion_likes"]) / max(judged["champion_likes"], 1e-9)


def stack_env(args: argparse.Namespace, seed: int, **settings: object) -> dict[str, str]:
    env = {"EDURANKER_BASE_MODEL": args.base_model, "EDURANKER_EMBEDDING_MODEL": args.embedding_model,
           "EDURANKER_SEED": str(seed), "EDURANKER_MAX_LENGTH": str(args.max_length), "HF_HUB_OFFLINE": "1"}
    return env | {f"EDURANKER_{k.upper()}": str(v) for k, v in settings.items()}


def run_pairs(collection: Collection, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    env = stack_env(args, seed, train_min_new_feedback=10**9, gate_min_prior_auc=0.0, experiment_share=1.0,
                    experiment_watch_share=args.watch_share, experiment_min_impressions=args.min_impressions,
                    experiment_max_impressions=args.max_impressions,
                    experiment_watch_impressions=args.max_impressions)
    rng = random.Random(seed)
    qids = sorted(collection.queries)
    with LocalStack(workdir, env=env) as stack:
        stack.start(catalogue=collection.corpus, ready_timeout_s=1200)
        site = Site(stack, collection, People(rng=rng))
        stream = Stream(qids, args.pair_searches, rng)
        safety = safety_checks(site, stream, args, seed)
        zero = version_zero(stack.settings)
        plain = {"prf_docs": 0, "weights": {"bm25": 1.0, "dense": 1.0}}  # BM25 + dense, no expansion
        no_prf = site.add_version(zero.model_copy(update=plain))
        bm25 = site.add_version(zero.model_copy(update={"weights": {"bm25": 1.0}}))
        # (name, champion, challenger): two where the champion is better, one where the challenger is.
        pairs = [("bm25", "v0", bm25.version), ("no_prf", "v0", no_prf.version),
                 ("prf", no_prf.version, "v0")]
        results, interleaved_ms = [], []
        for name, champion, challenger in pairs:
            if champion != "v0":
                site.admin("POST", f"/versions/{champion}/promote")
                site.wait_serving(champion, "v0")  # its watch: ended, the pair is tried on its own
                site.admin("POST", "/experiments/stop")
                site.wait_serving(champion, None)
            experiment_id = site.admin("POST", f"/versions/{challenger}/challenge")["experiment_id"]
            site.wait_serving(champion, challenger)
            start = len(site.searches)
            ended = site.until_decided(experiment_id, stream, args.pair_searches)
            if ended["status"] != "ended":
                site.admin("POST", "/experiments/stop")
            interleaved_ms += [s["ms"] for s in site.searches[start:start + args.latency_searches]]
            results.append(compare(site, name, ended, args, seed))
            log.info("seed=%d pair=%s decision=%s impressions=%s", seed, name, ended["decision"],
                     ended["evidence"].get("impressions"))
            back_to_zero(site)
        # Version 0 alone, the latency reference, under the same load (people rate as they search).
        start = len(site.searches)
        for step in range(args.latency_searches):
            site.play(stream.at(step))
        plain_ms = [s["ms"] for s in site.searches[start:]]
    latency = {"plain_p50_ms": percentile(plain_ms, 0.5), "plain_p95_ms": percentile(plain_ms, 0.95),
               "interleaved_p50_ms": percentile(interleaved_ms, 0.5),
               "interleaved_p95_ms": percentile(interleaved_ms, 0.95)}
    latency["p95_ratio"] = latency["interleaved_p95_ms"] / latency["plain_p95_ms"]
    return {"seed": seed, "pairs": results, "safety": safety, "latency": latency}


def back_to_zero(site: Site) -> None:
    """Version 0 as the champion, serving alone, whatever the last experiment decided.

    Read from the trainer, which acted on the decision before recording the experiment ended;
    the replicas follow a moment later, so asking them could miss a promotion in flight."""
    for _ in range(10):
        if site.admin("GET", "/versions")["champion"] is not None:
            site.admin("POST", "/rollback")  # ends the running experiment (the watch) too
        elif any(e["status"] == "running" for e in site.experiments()):
            site.admin("POST", "/experiments/stop")
        else:
            break
    site.wait_serving("v0", None)


def safety_checks(site: Site, stream: Stream, args: argparse.Namespace, seed: int) -> dict:
    """A challenger trained on flipped labels, then a degraded champion: users must refuse both."""
    flipped = People(flipped=True, rng=random.Random(seed + 1000))
    for step in range(args.flipped_searches):
        site.play(stream.at(step), flipped)
    request = site.admin("POST", "/train", json={"include_test": False})

    def run() -> dict | None:
        runs = site.admin("GET", "/runs", params={"limit": 20})["runs"]
        mine = [r for r in runs if r["request_event_id"] == request["event_id"]]
        return next((r for r in mine if r["status"] != "running"), None)

    trained = wait_for(run, args.train_timeout, 1.0, "the run on flipped feedback")
    out: dict = {"flipped_run": {k: trained.get(k) for k in ("status", "detail", "version", "pairs")}}
    if trained["status"] == "challenger":
        experiment = site.experiments()[0]
        site.wait_serving("v0", trained["version"])
        ended = site.until_decided(experiment["experiment_id"], stream, args.pair_searches)
        out["flipped_experiment"] = ended
        out["flipped_rejected_online"] = ended["decision"] == "retire"
        impressions = site.impressions(experiment["experiment_id"])
        if ended["decision"] in ("promote", "retire") and impressions:
            out["flipped_judged"] = {"experiment_id": ended["experiment_id"], "decision": ended["decision"],
                                     "impressions": ended["evidence"].get("impressions"),
                                     **truth(impressions, site.collection.qrels)}
        if ended["status"] != "ended":
            site.admin("POST", "/experiments/stop")
        elif ended["decision"] == "promote":
            site.admin("POST", "/rollback")
        site.wait_serving("v0", None)
    else:  # the offline safety checks already refused it: not what this harness tests
        out["flipped_rejected_online"] = None
    zero = version_zero(site.stack.settings)
    # BM25 backwards within the candidates: worse whatever the embedding model.
    degraded = site.add_version(zero.model_copy(update={"weights": {"bm25": -1.0}}))
    site.admin("POST", f"/versions/{degraded.version}/promote")
    site.wait_serving(degraded.version, "v0")
    watch = site.experiments()[0]
    ended = site.until_decided(watch["experiment_id"], stream, args.pair_searches * 4)
    out["rollback_experiment"] = ended
    if ended["status"] != "ended":
        site.admin("POST", "/experiments/stop")
    site.wait_serving("v0" if ended["decision"] == "rollback" else degraded.version, None)
    if ended["decision"] != "rollback":  # the pairs need version 0 as the champion
        site.admin("POST", "/rollback")
        site.wait_serving("v0", None)
    out["rollback_happened"] = ended["decision"] == "rollback"
    out["rollback_impressions"] = ended["evidence"].get("impressions")
    out["rollback_share"] = ended["share"]
    return out


def run_loop(collection: Collection, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    rng = random.Random(seed)
    qids = sorted(collection.queries)
    rng.shuffle(qids)
    cut = round(len(qids) * 0.75)
    traffic, held_out = sorted(qids[:cut]), sorted(qids[cut:])
    env = stack_env(args, seed, train_min_new_feedback=args.min_new)
    with LocalStack(workdir, env=env) as stack:
        stack.start(catalogue=collection.corpus, ready_timeout_s=1200)
        site = Site(stack, collection, People(rng=rng))
        v0 = {q: ndcg10([r["resource_id"] for r in site.search(q)["results"]], collection.qrels[q])
              for q in qids}
        stream = Stream(traffic, args.searches, rng)
        played = [site.play(stream.at(step)) for step in range(args.searches)]
        final = site.champion_alone(held_out)
        experiments = site.experiments()
        final_version = site.serving()["version"]
        runs = site.admin("GET", "/runs", params={"limit": 200})["runs"]
        judged = []
        for e in experiments:
            if e["kind"] == "challenge" and e["decision"] in ("promote", "retire"):
                impressions = site.impressions(e["experiment_id"])
                if impressions:
                    judged.append({"experiment_id": e["experiment_id"], "decision": e["decision"],
                                   "impressions": e["evidence"].get("impressions"),
                                   **truth(impressions, collection.qrels)})
    last = played[-max(1, len(played) // 4):]
    return {"seed": seed, "traffic_queries": traffic, "held_out_queries": held_out,
            "ndcg10_traffic_v0": statistics.mean(v0[p["qid"]] for p in last),
            "ndcg10_traffic_final": statistics.mean(p["ndcg"] for p in last),
            "ndcg10_held_out_v0": statistics.mean(v0[q] for q in held_out),
            "ndcg10_held_out_final": statistics.mean(final.values()),
            "held_out_paired": paired_gain({q: v0[q] for q in held_out}, final),
            "final_version": final_version, "searches": len(played),
            "feedback_runs": [{k: r.get(k) for k in ("version", "status", "detail", "pairs", "online")}
                              for r in runs],
            "experiments": [{k: e.get(k) for k in ("kind", "champion", "challenger", "decision", "reason")}
                            | {"impressions": e["evidence"].get("impressions")} for e in experiments],
            "judged_challenges": judged}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--searches", type=int, default=5000, help="searches in each seed's loop")
    parser.add_argument("--pair-searches", type=int, default=6000, help="most searches for one experiment")
    parser.add_argument("--latency-searches", type=int, default=200)
    parser.add_argument("--flipped-searches", type=int, default=300)
    parser.add_argument("--min-impressions", type=int, default=200)
    parser.add_argument("--max-impressions", type=int, default=20000)
    parser.add_argument("--watch-share", type=float, default=0.5, help="share of a watch in the pairs stack")
    parser.add_argument("--min-new", type=int, default=100,
                        help="EDURANKER_TRAIN_MIN_NEW_FEEDBACK in the loop")
    parser.add_argument("--resamples", type=int, default=50, help="replays of each pair's impressions")
    parser.add_argument("--resample-cap", type=int, default=40000, help="most impressions of one replay")
    parser.add_argument("--base-model", default=OFFLINE_BASE_MODEL)
    parser.add_argument("--embedding-model", default=OFFLINE_BASE_MODEL)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train-timeout", type=float, default=900)
    parser.add_argument("--skip-loop", action="store_true", help="only the pairs and safety stack")
    parser.add_argument("--pairs-from", type=Path, default=None,
                        help="reuse the pairs and safety results of an earlier online.json: only loops run")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "online")
    parser.add_argument("--out", type=Path, default=RESULTS / "online.json")
    args = parser.parse_args()
    collection = start_harness(args.dataset)
    if collection is None:
        return 2
    blank = sorted(q for q, text in collection.queries.items() if not text.strip())
    if blank:  # a search needs some text: the service would refuse them (422)
        log.warning("left out %d blank queries: %s", len(blank), ", ".join(blank[:10]))
        collection.queries = {q: t for q, t in collection.queries.items() if t.strip()}
    started = time.perf_counter()
    pairs, loops = [], []
    if args.pairs_from:  # the pairs do not depend on the loop's policy: measured once, reused
        pairs = [run for run in json.loads(args.pairs_from.read_text())["pairs"] if run["seed"] in args.seeds]
    for seed in args.seeds:
        if not args.pairs_from:
            pairs.append(run_pairs(collection, seed, args, fresh(args.workdir / f"pairs-{seed}")))
        if not args.skip_loop:
            loops.append(run_loop(collection, seed, args, fresh(args.workdir / f"loop-{seed}")))
    result = {"dataset": str(args.dataset), **aggregate(pairs, loops),
              "people": asdict(People()) | {"rng": None},
              "note": ("impressions_to_decide_* are medians over resampled replays of the impressions the "
                       "services logged (the A/B arm shows each logged ranking alone to the same simulated "
                       "people); the real experiments' decisions are under pairs[].pairs[].experiment"),
              "settings": {k: str(v) for k, v in vars(args).items()},
              "total_s": time.perf_counter() - started,
              "pairs": pairs, "loops": loops}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k not in ("pairs", "loops", "settings")}, indent=2,
                     default=str))
    return 0


def fresh(folder: Path) -> Path:
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
