"""How many interleaved searches the product needs to tell lists a known few per cent apart.

`make online` compares the rankers its loops produce, so the gaps it measures are whatever those
rankers happen to be; this study controls the gap. Version 0's Cranfield rankings (the served
pipeline code, cached by `bench.studies.interleaving`) are made worse on purpose: on a share of
the queries, the best-placed relevant result of the top 10 goes a few places down
(`interleaving.moved_down`). Of those variants, the ones whose credit per search (what the simulated
people earn a list shown alone, credited as the product credits it) is 2 to 5 % below version 0's
are each tried in many experiments. Each experiment has its own traffic (Zipf popularity over the
queries in a random order), its own coin for which list is the champion, and is played with the
product's probabilistic interleaving (`shared.online.interleaving.interleave`), its credit and its
sequential test (`bench.online_replay.interleaving_run`) by the people `make online` plays
(`tools.people.PEOPLE`), until the test decides or the cap. The same traffic as an A/B test
(`ab_run`, same rule) is beside it. People without a preference (`INDIFFERENT`) play some
experiments of every variant too: any decision of theirs is an error, which the test keeps below
its alpha. The gap that counts is each experiment's own (its traffic
weighs the queries): `by_gap` groups the experiments by it.

    .venv/bin/python -m bench.studies.sensitivity                 # ~10 minutes, rankings cached
    .venv/bin/python -m bench.studies.sensitivity --experiments 10 --rules product
    .venv/bin/python -m bench.studies.sensitivity --people generous-raters --low 0.01 --high 0.05
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.harness.collection import DEFAULT_DATASET, start_harness
from bench.harness.results import add_output_arguments, load_average, write_json
from bench.online_replay import Impression, Person, ab_run, interleaving_run, summary
from bench.studies.interleaving import K, load_rankings, moved_down, zipf_weights
from shared.online import betting
from shared.online.betting import SequentialTest
from shared.online.interleaving import interleave
from tools.people import PEOPLE, Searchers

RULES: dict[str, tuple[float, tuple[float, ...]]] = {
    "product": (betting.CLIP, betting.FRACTIONS),
    "before": (2.0, tuple(s * 0.5**j for s in (1.0, -1.0) for j in range(1, 12)))}
"""The sequential test's clip and bettors' fractions: today's, and the rule's until this study
(clip at two likes, fractions 1/2 to 1/2048), which `playing` swaps into the product's module for
its experiments, so that both are played by the product's own tally on the same traffic."""
INDIFFERENT = Searchers(name="indifferent", click=(0.4, 0.4), dwell_median_s=(20.0, 20.0), noise=0.5)
"""People who open, stay and rate alike whatever the result: nobody prefers either list."""


@contextlib.contextmanager
def playing(rule: str) -> Iterator[None]:
    """The product's test with `rule`'s clip and fractions for the block, today's again after it."""
    kept = betting.CLIP, betting.FRACTIONS
    betting.CLIP, betting.FRACTIONS = RULES[rule]
    try:
        yield
    finally:
        betting.CLIP, betting.FRACTIONS = kept


SHARES = (0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1)
BYS = (1, 2)


def credit_per_search(rankings: dict[str, list[str]], qids: list[str], qrels: dict[str, dict[str, int]],
                      people: Person) -> np.ndarray:
    """What each query's top 10 earns a search from these people, shown alone."""
    return np.array([people.expected_value(rankings[q][:K], qrels[q]) for q in qids])


def variants(rankings: dict[str, dict[str, list[str]]], qids: list[str], qrels: dict[str, dict[str, int]],
             people: Person, low: float, high: float) -> dict[str, tuple[dict[str, list[str]], float]]:
    """The rankers whose relative gap below version 0 (queries equally weighted) is in [low, high],
    the gap beside each: the study's other rankers (a natural gap) and version 0 moved down (a made
    one), at most one of these per percentage point."""
    v0 = rankings["v0"]
    base = credit_per_search(v0, qids, qrels, people)

    def gap(ranking: dict[str, list[str]]) -> float:
        return float((base - credit_per_search(ranking, qids, qrels, people)).mean() / abs(base.mean()))

    out = {name: (ranking, gap(ranking)) for name, ranking in rankings.items() if name != "v0"}
    out = {name: found for name, found in out.items() if low <= found[1] <= high}
    points: set[int] = set()
    for share in SHARES:
        for by in BYS:
            ranking = moved_down(v0, qrels, share, by)
            made = gap(ranking)
            if low <= made <= high and int(made * 100) not in points:
                points.add(int(made * 100))
                out[f"down{int(share * 100)}by{by}"] = (ranking, made)
    return out


def interleavings(first: dict[str, list[str]], second: dict[str, list[str]], qids: list[str],
                  draws: int) -> dict[str, list[Impression]]:
    """Each query's interleaved lists, `draws` inference ids each, as the reranker builds them;
    `first` the champion."""
    out = {}
    for q in qids:
        out[q] = []
        for d in range(draws):
            placed = interleave(first[q], second[q], K, f"sensitivity:{q}:{d}")
            out[q].append(Impression(query=q, shown=tuple(p.resource_id for p in placed),
                                     teams=tuple(p.team for p in placed), champion=tuple(first[q][:K]),
                                     challenger=tuple(second[q][:K]), shares=tuple(p.share for p in placed)))
    return out


def experiment(pools: dict[int, dict[str, list[Impression]]], qids: list[str],
               qrels: dict[str, dict[str, int]], worse: np.ndarray, better: np.ndarray, people: Person,
               args: argparse.Namespace, index: int) -> dict:
    """One experiment: its traffic, which list is the champion, and when each method decided."""
    np_rng = np.random.default_rng([args.seed, index])
    weights = zipf_weights(np_rng, len(qids), args.zipf)
    orientation = 1 if np_rng.random() < 0.5 else -1  # +1: the worse list is the champion
    traffic = np_rng.choice(len(qids), size=args.traffic, p=weights)
    pool = pools[orientation]
    impressions = [pool[qids[i]][int(np_rng.integers(args.draws))] for i in traffic]
    champion_credit, challenger_credit = (worse, better) if orientation > 0 else (better, worse)
    gap = float(weights @ (challenger_credit - champion_credit) / abs(weights @ champion_credit))
    right = "challenger" if gap > 0 else "champion"
    if people is INDIFFERENT:
        gap, right = 0.0, "neither"
    test, rng = SequentialTest(args.alpha), random.Random(f"{args.seed}:{index}")
    interleaved = interleaving_run(impressions, qrels, test, args.floor, rng, people, args.cap)
    ab = ab_run(impressions, qrels, test, args.floor, rng, people, args.cap)
    return {"relative_gap": gap, "right": right, "interleaving": interleaved, "ab": ab}


def run_variant(name: str, worse_ranking: dict[str, list[str]], v0: dict[str, list[str]], qids: list[str],
                qrels: dict[str, dict[str, int]], people: Person,
                args: argparse.Namespace) -> dict[str, tuple[dict, list[dict]]]:
    """Each rule's experiments on this variant, the same traffic for all: its summary and its rows."""
    pools = {1: interleavings(worse_ranking, v0, qids, args.draws),
             -1: interleavings(v0, worse_ranking, qids, args.draws)}
    worse = credit_per_search(worse_ranking, qids, qrels, people)
    better = credit_per_search(v0, qids, qrels, people)
    done = {}
    for rule in args.rules:
        started = time.perf_counter()
        with playing(rule):
            rows = [experiment(pools, qids, qrels, worse, better, people, args, i)
                    for i in range(args.experiments)]
            indifferent = [experiment(pools, qids, qrels, worse, better, INDIFFERENT, args,
                                      args.experiments + i) for i in range(args.no_preference)]
        out: dict = {"relative_gap_uniform": float((better - worse).mean() / abs(worse.mean())),
                     "relative_gap_experiments": {
                         "median": statistics.median(abs(r["relative_gap"]) for r in rows),
                         "min": min(abs(r["relative_gap"]) for r in rows),
                         "max": max(abs(r["relative_gap"]) for r in rows)},
                     "queries_changed": sum(worse_ranking[q][:K] != v0[q][:K] for q in qids),
                     **{method: summarise(rows, method, args.cap) for method in METHODS},
                     "no_preference": {m: {"experiments": len(indifferent),
                                           "decided": sum(r[m].at_floor is not None for r in indifferent)}
                                       for m in METHODS},
                     "seconds": round(time.perf_counter() - started, 1)}
        print(f"{rule}:{name}", json.dumps(out), flush=True)
        done[rule] = out, rows + indifferent
    return done


METHODS = ("interleaving", "ab")


def summarise(rows: list[dict], method: str, cap: int) -> dict:
    """Impressions to a decision (a run that never decided counts at the cap), and how often it came
    and was right, each experiment judged against its own truth; with the product's minimum."""
    runs = [r[method] for r in rows]
    used = [run.at_floor if run.at_floor is not None else cap for run in runs]
    decided = [run.at_floor for run in runs if run.at_floor is not None]
    by_truth: dict[str, list] = {}
    for r, run in zip(rows, runs, strict=True):
        by_truth.setdefault(r["right"], []).append(run)
    parts = [summary(group, truth, True, cap) for truth, group in by_truth.items()]
    return {"median_impressions": statistics.median(used) if used else None,
            "median_decided": statistics.median(decided) if decided else None,
            "decided_within_5000": sum(n <= 5000 for n in decided),
            **{k: sum(p[k] for p in parts) for k in ("right", "wrong", "undecided", "runs")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--people", choices=sorted(PEOPLE), default="informational")
    parser.add_argument("--no-preference", type=int, default=20,
                        help="experiments per variant played by people without a preference (every decision "
                             "is an error)")
    parser.add_argument("--low", type=float, default=0.015, help="smallest relative gap tried")
    parser.add_argument("--high", type=float, default=0.08, help="largest relative gap tried")
    parser.add_argument("--experiments", type=int, default=40, help="experiments per variant")
    parser.add_argument("--traffic", type=int, default=4000, help="searches drawn per experiment, resampled")
    parser.add_argument("--draws", type=int, default=256,
                        help="interleavings per query (a few make a pool whose shares are not even)")
    parser.add_argument("--cap", type=int, default=20_000, help="most impressions of one experiment")
    parser.add_argument("--floor", type=int, default=200, help="the product's minimum before any decision")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--candidates", type=int, default=50, help="first-stage results each ranker orders")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rules", nargs="+", choices=sorted(RULES), default=["product", "before"],
                        help="the product's bettors, and those it had before, on the same traffic")
    add_output_arguments(parser, "sensitivity_study", workdir="study")
    args = parser.parse_args()
    collection = start_harness(args.dataset)
    started = time.perf_counter()
    people = PEOPLE[args.people]
    rankings = load_rankings(collection, args)
    v0 = rankings["v0"]
    qids = sorted(q for q in v0 if v0[q] and collection.qrels.get(q))
    chosen = variants({name: r for name, r in rankings.items() if not name.startswith("down")}, qids,
                      collection.qrels, people, args.low, args.high)
    result: dict = {
        "conditions": {k: str(v) for k, v in vars(args).items()} | {
            "people": people.parameters(), "indifferent_people": INDIFFERENT.parameters(),
            "rules": {rule: {"clip": clip, "fractions": [round(f, 4) for f in fractions]}
                      for rule, (clip, fractions) in RULES.items()},
            "queries": len(qids),
            "truth": "credit per search of each list shown alone, weighted by the experiment's traffic",
            "variants": "the study's other rankers (bench.studies.interleaving) and version 0 with its "
                        "best-placed relevant result moved down `by` places on `share` % of the queries "
                        "(downSHAREbyBY), each against version 0",
            "load_average": load_average()}}
    played = {name: run_variant(name, ranking, v0, qids, collection.qrels, people, args)
              for name, (ranking, _) in sorted(chosen.items(), key=lambda kv: kv[1][1])}
    for rule in args.rules:
        rows = [r for by_rule in played.values() for r in by_rule[rule][1]]
        by_gap = {}
        for low, high in itertools.pairwise((0.0, 0.02, 0.05, 1.0)):
            group = [r for r in rows if r["right"] != "neither" and low <= abs(r["relative_gap"]) < high]
            if group:
                by_gap[f"{low:.0%}-{high:.0%}"] = {"experiments": len(group),
                                                    **{m: summarise(group, m, args.cap) for m in METHODS}}
        result[rule] = {
            "by_gap": by_gap,
            "no_preference": {m: {"experiments": sum(r["right"] == "neither" for r in rows),
                                  "decided": sum(r["right"] == "neither" and r[m].at_floor is not None
                                                 for r in rows)} for m in METHODS},
            "variants": {name: by_rule[rule][0] for name, by_rule in played.items()}}
    result["total_s"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
