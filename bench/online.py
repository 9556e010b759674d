"""Let users decide: simulated people play a BEIR collection through the real services.

The people (`--people`, `tools.people`) open results and stay or come back, and rate on a few
searches in a hundred (`Searchers`: position-based, informational, by default); every parameter
is in the results. What they do reaches the product as it would from a real page: searches carry
their user id, opens and their dwell go to `/api/interactions`, ratings to `/api/feedback`.
`--evidence` plays the loop twice: with every kind of evidence ("all") and with ratings alone
("ratings": the product as it was, the same people at the same rates, their opens not sent),
and replays the pairs' impressions both ways.

Two stacks per seed (embedded broker, SQLite, the four services, the corpus as catalogue):

- **pairs**: rankers whose true difference the judgments give (version 0 against BM25 alone,
  and against itself without pseudo-relevance feedback, 0.02 nDCG@10 apart on Cranfield, each
  way round: once as the champion, once as the challenger) are interleaved on every search
  until the aggregator's test decides. The right winner is the list the judgments say these
  people like more (their attention read into the judgments); nDCG@10's verdict is kept
  beside it. The impressions the services logged are then replayed, resampled, to compare
  the impressions interleaving needs to decide with what an A/B test on likes per search
  needs, both judged by the product's rule at the same error rate, with the product's minimum
  of impressions and without (`bench.online_replay`; `bench.online_summary` sums them up).
  Then safety: a challenger trained on flipped labels must be retired by users, and a
  degraded champion promoted by an operator must be rolled back by them.
- **loop**: a stream of searches where queries repeat as real traffic does (Zipf popularity,
  new queries arriving; a quarter of the queries are held out and never asked). Training fires
  only from the aggregator's policy, promotions only from users' decisions. What users see is
  scored by the judgments: nDCG@10 of the lists actually shown, over the last quarter of the
  stream, against version 0's on the same searches.

    .venv/bin/python -m bench.online --dataset ../shared/datasets/cranfield --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

from bench.harness.collection import DEFAULT_DATASET, Collection, start_harness
from bench.harness.measures import examination_error, ndcg10, nearest_rank, paired_gain
from bench.harness.results import add_output_arguments, fresh, write_json
from bench.harness.stack import add_model_arguments, stack_env
from bench.harness.traffic import Stream
from bench.online_replay import (
    Impression,
    Person,
    ab_normal_run,
    ab_run,
    fixed_horizon,
    interleaving_run,
    summary,
)
from bench.online_summary import aggregate
from shared.ml.ranking.pipeline import PipelineSpec, version_zero
from shared.ml.registry import Registry
from shared.online.betting import SequentialTest
from shared.online.interleaving import CHALLENGER_PREFIX
from shared.records import ModelVersion
from shared.store import open_store
from tools.client import Client, Refused
from tools.localstack import LocalStack, wait_for
from tools.people import EVIDENCE, PEOPLE, Searchers

log = logging.getLogger("online")


class Site:
    """The running services as the simulated people and the operator reach them."""

    def __init__(self, stack: LocalStack, collection: Collection, people: Person, rng: random.Random,
                 evidence: str = "all") -> None:
        self.stack, self.collection, self.people, self.rng = stack, collection, people, rng
        self.evidence = evidence
        self.client = Client.of(stack, timeout=120)
        self.searches: list[dict] = []  # every search played: query, inference id, shown, nDCG, latency

    def search(self, qid: str, **who: object) -> dict:
        """A search; without `who` (nobody acts on it: the harness's own measures) marked `is_test`,
        so that it is not taken for people who saw the results and left them."""
        started = time.perf_counter()
        body = self.client.search(self.collection.queries[qid], top_k=10, **(who or {"is_test": True}))
        body["client_ms"] = (time.perf_counter() - started) * 1000
        return body

    def play(self, qid: str, people: Person | None = None, rng: random.Random | None = None) -> dict:
        """One person searches, opens and rates (the site's people, or `people` drawing from `rng`);
        returns what was shown, how good it was, and what the person did."""
        person = f"person-{len(self.searches)}"
        body = self.search(qid, user_id=person)
        shown = [r["resource_id"] for r in body["results"]]
        acts = (people or self.people).act(shown, self.collection.qrels[qid], rng or self.rng)
        opens = [a for a in acts if a.dwell_s is not None]
        if opens and self.evidence == "all":
            self.client.interactions([{"inference_id": body["inference_id"], "resource_id": shown[a.position],
                                       "dwell_s": a.dwell_s, "user_id": person} for a in opens])
        for act in acts:
            if act.label is not None:
                self.client.feedback(body["inference_id"], shown[act.position], act.label, user_id=person)
        played = {"qid": qid, "inference_id": body["inference_id"], "shown": shown,
                  "ndcg": ndcg10(shown, self.collection.qrels[qid]), "version": body["model_version"],
                  "ms": body["client_ms"], "opens": len(opens),
                  "ratings": sum(a.label is not None for a in acts)}
        self.searches.append(played)
        return played

    def admin(self, method: str, path: str, **kwargs: object) -> dict:
        return self.client.admin(method, path, **kwargs)

    def experiments(self) -> list[dict]:
        return self.admin("GET", "/experiments", params={"limit": 200})["experiments"]

    def serving(self) -> dict:
        return self.client.model_info()

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

    def until_decided(self, experiment_id: str, stream: Stream, cap: int) -> dict:
        """Plays the stream until users decide the experiment, else stops it after `cap` searches:
        its ended record (the services may end it as it is stopped: then theirs stands)."""
        for step in range(cap):
            self.play(stream.at(step))
            if step % 25 == 24 and (found := self.experiment(experiment_id))["status"] == "ended":
                return found
        if self.experiment(experiment_id)["status"] == "running":
            with contextlib.suppress(Refused):  # ended by the services meanwhile: none is running
                self.admin("POST", "/experiments/stop")
        return self.experiment(experiment_id)

    def experiment(self, experiment_id: str) -> dict:
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


def truth(impressions: list[Impression], qrels: dict[str, dict[str, int]], people: Person,
          evidence: str = "all") -> dict[str, float]:
    """Each ranker by the judgments on the experiment's own traffic: nDCG@10, and what a search
    shown its list alone earns from the simulated people (`*_likes`: the credit the product gives
    what they do, the judgments read with their attention and their behaviour)."""
    out = {side: statistics.mean(ndcg10(getattr(i, side), qrels[i.query]) for i in impressions)
           for side in ("champion", "challenger")}
    for side in ("champion", "challenger"):
        out[f"{side}_likes"] = statistics.mean(
            people.expected_value(getattr(i, side), qrels[i.query], evidence) for i in impressions)
    return out


def better(judged: dict[str, float], key: str = "") -> str:
    return "challenger" if judged["challenger" + key] > judged["champion" + key] else "champion"


def replays(impressions: list[Impression], qrels: dict[str, dict[str, int]], experiment: dict,
            args: argparse.Namespace, seed: int, people: Person, evidence: str) -> dict:
    """Interleaving against A/B on the replayed impressions, what they do credited as `evidence`.

    Both replays use the product's rule (testing by betting, `shared/online/betting.py`): interleaving
    on each impression's net credit, the A/B test on the difference of what a pair of searches
    earned, one shown each ranker's list alone. Each replay is counted with the product's minimum
    before any decision and without it, so that what each method needs is not capped by a policy.
    The normal-mixture A/B test, its spread set to the true difference, is kept beside as a
    reference."""
    judged = truth(impressions, qrels, people, evidence)
    # What users prefer is what they see: what the judgments predict each list earns. nDCG@10
    # weighs ranks 6 to 10 more than these users look at them, and may disagree on close pairs.
    right = better(judged, "_likes")
    test = SequentialTest(experiment["alpha"])
    rng = random.Random(seed)
    horizon = fixed_horizon(impressions, qrels, rng, people, evidence=evidence)
    tau = abs(horizon["like_rate_challenger"] - horizon["like_rate_champion"]) or 0.01
    floor, cap = experiment["min_impressions"], args.resample_cap
    runs = {"interleaving": [interleaving_run(impressions, qrels, test, floor, rng, people, cap, evidence)
                             for _ in range(args.resamples)],
            "ab": [ab_run(impressions, qrels, test, floor, rng, people, cap, evidence)
                   for _ in range(args.resamples)],
            "ab_normal": [ab_normal_run(impressions, qrels, test.alpha, tau, floor, rng, people, cap,
                                        evidence) for _ in range(args.resamples)]}
    return {"by_judgments": judged, "right_winner": right, "relative_gap": relative_gap(judged),
            "fixed_horizon_80_power": horizon,
            **{f"resampled_{method}": {"no_floor": summary(done, right, False, cap),
                                       "with_floor": summary(done, right, True, cap)}
               for method, done in runs.items()}}


def compare(site: Site, name: str, experiment: dict, args: argparse.Namespace, seed: int) -> dict:
    """The real experiment's outcome, then interleaving against A/B on its replayed impressions,
    with every kind of evidence and with ratings alone."""
    impressions = site.impressions(experiment["experiment_id"])
    qrels = site.collection.qrels
    measured = replays(impressions, qrels, experiment, args, seed, site.people, "all")
    right, right_ndcg = measured["right_winner"], better(measured["by_judgments"])
    decision = experiment["decision"] if experiment["decision"] in ("promote", "retire") else None
    return {"pair": name, "experiment": experiment, "logged_impressions": len(impressions), **measured,
            "right_winner_ndcg10": right_ndcg,
            "decided": decision, "decided_right": None if decision is None else (
                (decision == "promote") == (right == "challenger")),
            "decided_right_ndcg10": None if decision is None else (
                (decision == "promote") == (right_ndcg == "challenger")),
            "ratings_only": replays(impressions, qrels, experiment, args, seed, site.people, "ratings")}


def relative_gap(judged: dict[str, float]) -> float:
    """How far apart the two lists are in likes per search, relative to the champion's."""
    return (judged["challenger_likes"] - judged["champion_likes"]) / max(judged["champion_likes"], 1e-9)


def run_pairs(collection: Collection, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    env = stack_env(args, seed, train_min_new_feedback=10**9, train_min_new_interactions=10**9,
                    gate_min_prior_auc=0.0, experiment_share=1.0,
                    experiment_watch_share=args.watch_share, experiment_min_impressions=args.min_impressions,
                    experiment_max_impressions=args.max_impressions,
                    experiment_watch_impressions=args.max_impressions)
    rng = random.Random(seed)
    qids = sorted(collection.queries)
    with LocalStack(workdir, env=env) as stack:
        stack.start(catalogue=collection.corpus, ready_timeout_s=1200)
        site = Site(stack, collection, PEOPLE[args.people], rng)
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
    latency = {"plain_p50_ms": nearest_rank(plain_ms, 0.5), "plain_p95_ms": nearest_rank(plain_ms, 0.95),
               "interleaved_p50_ms": nearest_rank(interleaved_ms, 0.5),
               "interleaved_p95_ms": nearest_rank(interleaved_ms, 0.95)}
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
    flipped, rng = dataclasses.replace(site.people, flipped=True), random.Random(seed + 1000)
    for step in range(args.flipped_searches):
        site.play(stream.at(step), flipped, rng)
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
                                     **truth(impressions, site.collection.qrels, site.people)}
        if ended["decision"] == "promote":
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
    site.wait_serving("v0" if ended["decision"] == "rollback" else degraded.version, None)
    if ended["decision"] != "rollback":  # the pairs need version 0 as the champion
        site.admin("POST", "/rollback")
        site.wait_serving("v0", None)
    out["rollback_happened"] = ended["decision"] == "rollback"
    out["rollback_impressions"] = ended["evidence"].get("impressions")
    out["rollback_share"] = ended["share"]
    return out


def run_loop(collection: Collection, seed: int, args: argparse.Namespace, workdir: Path,
             evidence: str = "all") -> dict:
    rng = random.Random(seed)
    qids = sorted(collection.queries)
    rng.shuffle(qids)
    cut = round(len(qids) * 0.75)
    traffic, held_out = sorted(qids[:cut]), sorted(qids[cut:])
    env = stack_env(args, seed, train_min_new_feedback=args.min_new,
                    train_min_new_interactions=args.min_new_interactions)
    with LocalStack(workdir, env=env) as stack:
        stack.start(catalogue=collection.corpus, ready_timeout_s=1200)
        people = PEOPLE[args.people]
        site = Site(stack, collection, people, rng, evidence)
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
                                   **truth(impressions, collection.qrels, people, evidence)})
        clicks = site.admin("GET", "/click-model")  # estimated from the whole stream, as a run would
    last = played[-max(1, len(played) // 4):]
    return {"seed": seed, "evidence": evidence, "traffic_queries": traffic, "held_out_queries": held_out,
            "ratings_per_search": sum(p["ratings"] for p in played) / len(played),
            "clicks_per_search": sum(p["opens"] for p in played) / len(played),
            "click_model": clicks, "propensity_error": propensity_error(clicks, people),
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


def propensity_error(clicks: dict | None, people: Person) -> dict | None:
    """The estimated examination against the simulated people's true curve, ranks 1 to 10: the
    largest relative error, and how many ranks' 95 % intervals hold the truth (position-based people
    only: a cascade's examination depends on what is above)."""
    if clicks is None or not isinstance(people, Searchers) or people.examination != "position":
        return None
    return examination_error(clicks, [1.0 / rank**people.decay for rank in range(1, 11)])


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
    parser.add_argument("--min-new-interactions", type=int, default=500,
                        help="EDURANKER_TRAIN_MIN_NEW_INTERACTIONS in the loop")
    parser.add_argument("--resamples", type=int, default=50, help="replays of each pair's impressions")
    parser.add_argument("--resample-cap", type=int, default=40000, help="most impressions of one replay")
    add_model_arguments(parser)
    parser.add_argument("--train-timeout", type=float, default=900)
    parser.add_argument("--people", choices=sorted(PEOPLE), default="informational",
                        help="the simulated people (tools.people)")
    parser.add_argument("--evidence", nargs="+", choices=EVIDENCE, default=list(EVIDENCE),
                        help="the loop with every kind of evidence, with ratings alone, or both")
    parser.add_argument("--skip-loop", action="store_true", help="only the pairs and safety stack")
    parser.add_argument("--skip-pairs", action="store_true", help="only the loops")
    parser.add_argument("--pairs-from", type=Path, default=None,
                        help="reuse the pairs and safety results of an earlier online.json: only loops run")
    add_output_arguments(parser, "online", workdir="online")
    args = parser.parse_args()
    collection = start_harness(args.dataset)
    blank = collection.blank_queries()
    if blank:  # a search needs some text: the service would refuse them (422)
        log.warning("left out %d blank queries: %s", len(blank), ", ".join(blank[:10]))
        collection.queries = {q: t for q, t in collection.queries.items() if t.strip()}
    started = time.perf_counter()
    pairs, loops = [], []
    if args.pairs_from:  # the pairs do not depend on the loop's policy: measured once, reused
        pairs = [run for run in json.loads(args.pairs_from.read_text())["pairs"] if run["seed"] in args.seeds]
    for seed in args.seeds:
        if not args.pairs_from and not args.skip_pairs:
            pairs.append(run_pairs(collection, seed, args, fresh(args.workdir / f"pairs-{seed}")))
        if not args.skip_loop:
            for evidence in args.evidence:
                loops.append(run_loop(collection, seed, args, fresh(args.workdir / f"loop-{evidence}-{seed}"),
                                      evidence))
    people = PEOPLE[args.people]
    mine = [loop for loop in loops if loop["evidence"] == "all"]
    rated_only = [loop for loop in loops if loop["evidence"] == "ratings"]
    errors = [loop["propensity_error"]["max_rel_error"] for loop in mine if loop["propensity_error"]]
    result = {"dataset": str(args.dataset), **aggregate(pairs, mine),
              "people": {**people.parameters(), "name": people.name, "click_model": people.name,
                         "ratings_per_search": _mean([loop["ratings_per_search"] for loop in loops]),
                         "clicks_per_search": _mean([loop["clicks_per_search"] for loop in loops])},
              "propensity_max_rel_error": max(errors) if errors else None,
              "ratings_only": aggregate([ratings_pairs(run) for run in pairs], rated_only),
              "note": ("impressions_to_decide_* are medians over resampled replays of the impressions the "
                       "services logged (the A/B arm shows each logged ranking alone to the same simulated "
                       "people); the real experiments' decisions are under pairs[].pairs[].experiment"),
              "settings": {k: str(v) for k, v in vars(args).items()},
              "total_s": time.perf_counter() - started,
              "pairs": pairs, "loops": loops}
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("pairs", "loops", "settings")}, indent=2,
                     default=str))
    return 0


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def ratings_pairs(run: dict) -> dict:
    """A seed's pairs as the ratings-only replays measured them (the same logged impressions)."""
    return {**run, "safety": {}, "pairs": [{**p, **p["ratings_only"], "decided": None} for p in run["pairs"]]}


if __name__ == "__main__":
    sys.exit(main())
