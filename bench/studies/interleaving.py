"""Which interleaving, credit and decision rule to use: an offline study on Cranfield.

Rankings are computed once per query by the real pipeline code for several rankers (version 0;
BM25 alone; dense alone; version 0 without pseudo-relevance feedback; version 0 expanding with
3 or 10 documents instead of 5; version 0 with the best relevant result of some queries moved
down, a controlled gap) and kept under var/study. Then, for each pair, hundreds of experiments:
each has its own traffic (Zipf popularity over the queries, a random order), its own truth (the
likes per search the simulated people give each ranker's list shown alone, on that traffic;
nDCG@10 beside), and is played by the simulated people (`tools.people`) on the lists each method shows
until its rule decides, with the product's minimum of impressions and without. The same traffic
is also played as an A/B test (each search sees one ranker alone) judged by the same rule, and by
the normal-mixture test with its spread set to the truth (which favours it). Experiments where
people click at random (no preference) check that every rule keeps its error rate.

    .venv/bin/python -m bench.studies.interleaving     # ~15 minutes on 2 busy cores, rankings cached
    .venv/bin/python -m bench.studies.interleaving --experiments 40 --no-preference 10 --pairs v0/bm25
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness.collection import DEFAULT_DATASET, Collection, start_harness
from bench.harness.measures import ndcg10
from bench.harness.results import add_output_arguments, load_average, write_json
from bench.studies.decision_rules import (
    BettingRule,
    Crossing,
    Rule,
    agrees_with_the_product,
    first_crossings,
    rules_for,
)
from bench.studies.interleaving_methods import (
    Lists,
    centred,
    optimized_lists,
    probabilistic_lists,
    product_lists,
    team_draft_lists,
)
from shared.online.betting import CLIP
from shared.online.interleaving import TAU
from tools.people import People

log = logging.getLogger("study")
K = 10


def compute_rankings(collection: Collection, candidates: int) -> dict[str, dict[str, list[str]]]:
    """Every ranker's ordering of BM25's top `candidates`, per query, by the served pipeline code."""
    from shared.ml.ranking.pipeline import RankingModel, version_zero
    from shared.ml.ranking.retrieval import CatalogueIndex
    from shared.settings import OFFLINE_BASE_MODEL, get_settings

    resources = collection.resources()
    settings = get_settings().model_copy(update={"base_model": OFFLINE_BASE_MODEL,
                                                 "embedding_model": OFFLINE_BASE_MODEL})
    zero = version_zero(settings)
    v0 = RankingModel.load(zero, None, "cpu")
    index = CatalogueIndex(resources, v0.embed_texts([r.text for r in resources]))
    specs = {"v0": zero,
             "no_prf": zero.model_copy(update={"prf_docs": 0, "weights": {"bm25": 1.0, "dense": 1.0}}),
             "bm25": zero.model_copy(update={"weights": {"bm25": 1.0}}),
             "dense": zero.model_copy(update={"weights": {"dense": 1.0}}),
             "prf3": zero.model_copy(update={"prf_docs": 3}),
             "prf10": zero.model_copy(update={"prf_docs": 10})}
    models = {name: RankingModel(spec=spec, embedder=v0.embedder if "dense" in spec.kind else None)
              for name, spec in specs.items()}
    out: dict[str, dict[str, list[str]]] = {name: {} for name in specs}
    for qid, text in collection.queries.items():
        positions, bm25 = index.bm25_top(text, candidates)
        for name, model in models.items():
            fused = model.score(index, text, positions, bm25)["fused"]
            out[name][qid] = [resources[positions[i]].id for i in np.argsort(-fused, kind="stable")]
    return out


def moved_down(ranking: dict[str, list[str]], qrels: dict[str, dict[str, int]], share: float,
               by: int) -> dict[str, list[str]]:
    """Version 0 made worse on purpose: on `share` of the queries (a hash picks them), its best-placed
    relevant result in the top 10 goes `by` places down. Worse by every measure, by a known amount."""
    out = {}
    for qid, order in ranking.items():
        order = list(order)
        pick = int(hashlib.sha1(f"down:{qid}".encode()).hexdigest()[:8], 16) / 16**8 < share
        first = next((i for i, d in enumerate(order[:K]) if d in qrels[qid]), None)
        if pick and first is not None:
            order.insert(first + by, order.pop(first))
        out[qid] = order
    return out


@dataclass
class Packed:
    """One method's lists for one pair, for every query, as padded arrays the simulation samples."""

    cumulative: np.ndarray  # (queries, lists): cumulative probability, 1 past the last list
    counts: np.ndarray  # (queries,)
    relevant: np.ndarray  # (queries, lists, K) bool
    credit: np.ndarray  # (queries, lists, K): a like's credit to the challenger (second ranker)

    @classmethod
    def of(cls, per_query: list[Lists], qrels: list[dict[str, int]]) -> Packed:
        width = max(len(lists.shown) for lists in per_query)
        cumulative = np.ones((len(per_query), width))
        relevant = np.zeros((len(per_query), width, K), dtype=bool)
        credit = np.zeros((len(per_query), width, K))
        for q, lists in enumerate(per_query):
            n = len(lists.shown)
            cumulative[q, :n] = np.cumsum(lists.probabilities)
            cumulative[q, n - 1:] = 1.0
            for row, shown in enumerate(lists.shown):
                relevant[q, row, :len(shown)] = [d in qrels[q] for d in shown]
            credit[q, :n, :lists.credit.shape[1]] = lists.credit
        return cls(cumulative, np.array([len(x.shown) for x in per_query]), relevant, credit)

    def likes_per_search(self, people: People) -> np.ndarray:
        """Per query: the likes a search gets on these lists, what users pay (or gain) meanwhile."""
        p_like = (people.rated_share(K) * people.like_chance(self.relevant)).sum(axis=2)
        probabilities = np.diff(np.concatenate([np.zeros((len(self.counts), 1)), self.cumulative], axis=1),
                                axis=1)
        return (probabilities * p_like).sum(axis=1)

    def expected(self, weights: np.ndarray, people: People, likes_only: bool) -> float:
        """The statistic's mean under this traffic: which ranker it favours given endless impressions."""
        examined = people.rated_share(K)
        p_like = examined * people.like_chance(self.relevant)
        p_dislike = examined - p_like
        net = p_like if likes_only else p_like - p_dislike
        probabilities = np.diff(np.concatenate([np.zeros((len(self.counts), 1)), self.cumulative], axis=1),
                                axis=1)
        per_query = (probabilities[:, :, None] * self.credit * net).sum(axis=(1, 2))
        return float(weights @ per_query)


@dataclass(frozen=True)
class Variant:
    """A method as the study plays it: which lists, which credit, which rule."""

    name: str
    lists: str  # team_draft, probabilistic, optimized
    likes_only: bool
    rule: str  # sign, bet
    tau: float = 3.0  # probabilistic interleaving's softmax exponent
    clip: float | None = None  # the betting rule's clip, --clip when None


PRODUCT = "probabilistic/likes-dislikes/mean"
"""What EduRanker serves since this study; `team_draft/likes-dislikes/sign` is what it served before."""
VARIANTS = [
    Variant("team_draft/likes-dislikes/sign", "team_draft", False, "sign"),
    Variant("team_draft/likes/sign", "team_draft", True, "sign"),
    Variant("team_draft/likes-dislikes/mean", "team_draft", False, "bet"),
    Variant("team_draft/likes/mean", "team_draft", True, "bet"),
    Variant(PRODUCT, "product", False, "bet", tau=TAU),
    Variant("probabilistic/likes/mean", "product", True, "bet", tau=TAU),
    Variant("optimized/likes-dislikes/mean", "optimized", False, "bet"),
    Variant("optimized/likes/mean", "optimized", True, "bet"),
    *[Variant(f"probabilistic(tau={tau:g})/likes-dislikes/mean", f"probabilistic:{tau:g}", False, "bet",
              tau=tau) for tau in (2.0, 3.0, TAU, 8.0)],
    Variant("probabilistic/likes-dislikes/mean(clip=1)", "product", False, "bet", tau=TAU, clip=1.0),
    Variant("probabilistic/likes-dislikes/mean(clip=4)", "product", False, "bet", tau=TAU, clip=4.0),
]


def lists_for(method: str, first: list[str], second: list[str], qid: str, draws: int) -> Lists:
    """A method's lists for one query: exact for team draft (every coin) and optimized interleaving
    (the linear program's), sampled for probabilistic interleaving and centred (`centred`)."""
    if method == "team_draft":
        return team_draft_lists(first, second, K)
    if method == "product":
        return centred(product_lists(first, second, K, draws, salt=qid))
    if method.startswith("probabilistic:"):
        seed = int(hashlib.sha1(qid.encode()).hexdigest()[:8], 16)
        return centred(probabilistic_lists(first, second, K, 4 * draws, seed=seed,
                                           tau=float(method.split(":")[1])))
    return optimized_lists(first, second, K)


def zipf_weights(rng: np.random.Generator, n: int, s: float) -> np.ndarray:
    """One experiment's traffic: each query's popularity 1/rank^s, the ranks in a random order."""
    weights = 1.0 / rng.permutation(np.arange(1, n + 1)) ** s
    return weights / weights.sum()


def play_interleaving(packed: Packed, weights: np.ndarray, orientation: int, variants: list[Variant],
                      rng: np.random.Generator, people: People,
                      args: argparse.Namespace) -> dict[str, Crossing]:
    """Impressions of one experiment until every variant's rule has decided, with and without the floor."""
    rules = {v.name: rules_for(v.rule, args.alpha, args.effect, v.clip or args.clip) for v in variants}
    found = {v.name: Crossing() for v in variants}
    done, chunk = 0, 256
    while done < args.cap and any(f.at is None or f.at_floor is None for f in found.values()):
        size = min(chunk, args.cap - done)
        q = rng.choice(len(weights), size, p=weights)
        row = (rng.random(size)[:, None] > packed.cumulative[q]).sum(axis=1)
        row = np.minimum(row, packed.counts[q] - 1)
        like, dislike = people.rate_many(packed.relevant[q, row], rng)
        credit = packed.credit[q, row] * orientation
        values = {True: (credit * like).sum(axis=1),
                  False: (credit * (like.astype(float) - dislike)).sum(axis=1)}
        for v in variants:
            if found[v.name].at is not None and found[v.name].at_floor is not None:
                continue
            crossed, direction = rules[v.name].step(values[v.likes_only])
            first_crossings(crossed, direction, done, 1, args.floor, found[v.name])
        done += size
        chunk = min(chunk * 2, 8192)
    return found


def play_ab(first: Packed, second: Packed, weights: np.ndarray, orientation: int, tau: float,
            rng: np.random.Generator, people: People, args: argparse.Namespace) -> dict[str, Crossing]:
    """The same traffic as an A/B test: pairs of searches, one shown the champion's list alone and one
    the challenger's; likes per search compared by the betting rule and by the normal mixture."""
    champion, challenger = (first, second) if orientation > 0 else (second, first)
    rules: dict[str, Rule] = {"ab/likes/mean": rules_for("bet", args.alpha, args.effect, args.clip),
                              "ab/likes/normal": rules_for("normal", args.alpha, args.effect, args.clip, tau)}
    found = {name: Crossing() for name in rules}
    done, chunk = 0, 256
    while done < args.cap and any(f.at is None or f.at_floor is None for f in found.values()):
        size = min(chunk, (args.cap - done) // 2)
        likes = []
        for side in (champion, challenger):
            q = rng.choice(len(weights), size, p=weights)
            like, _ = people.rate_many(side.relevant[q, 0], rng)
            likes.append(like.sum(axis=1).astype(float))
        pairs = np.stack(likes, axis=1)
        for name, rule in rules.items():
            if found[name].at is not None and found[name].at_floor is not None:
                continue
            values = pairs[:, 1] - pairs[:, 0] if isinstance(rule, BettingRule) else pairs
            crossed, direction = rule.step(values)
            first_crossings(crossed, direction, done, 2, args.floor, found[name])
        done += 2 * size
        chunk = min(chunk * 2, 8192)
    return found


RANDOM_CLICKS = People(noise=0.5)
"""People who like and dislike whatever the result: nobody prefers, every decision is an error."""
PAIRS = [  # (first, second): the second is the challenger when an experiment's coin says so
    ("v0", "bm25"), ("v0", "dense"), ("v0", "no_prf"), ("v0", "prf3"), ("v0", "prf10"),
    ("v0", "down10"), ("v0", "down25"), ("v0", "down50"),
]


def load_rankings(collection: Collection, args: argparse.Namespace) -> dict[str, dict[str, list[str]]]:
    """The rankings, computed once (several minutes) and kept under var/ keyed by the dataset."""
    key = hashlib.sha1(f"{args.dataset.resolve()}:{args.candidates}".encode()).hexdigest()[:10]
    cache = args.workdir / f"rankings-{key}.json"
    if cache.exists():
        rankings = json.loads(cache.read_text())
    else:
        rankings = compute_rankings(collection, args.candidates)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(rankings))
    for share in (10, 25, 50):
        rankings[f"down{share}"] = moved_down(rankings["v0"], collection.qrels, share / 100, 5)
    return rankings


def run_pair(first: str, second: str, rankings: dict[str, dict[str, list[str]]], collection: Collection,
             args: argparse.Namespace) -> dict:
    people = People()
    qids = sorted(q for q in rankings[first] if rankings[first][q] and rankings[second][q])
    qrels = [collection.qrels[q] for q in qids]
    started = time.perf_counter()
    variants = chosen_variants(args)
    packs = {m: Packed.of([lists_for(m, rankings[first][q], rankings[second][q], q, args.draws)
                           for q in qids], qrels) for m in {v.lists for v in variants}}
    alone = {name: Packed.of([Lists(np.ones(1), [tuple(rankings[name][q][:K])], np.zeros((1, K)))
                              for q in qids], qrels) for name in (first, second)}
    likes = {name: np.array([people.expected_likes(rankings[name][q][:K], collection.qrels[q])
                             for q in qids]) for name in (first, second)}
    ndcg = {name: np.array([ndcg10(rankings[name][q][:K], collection.qrels[q]) for q in qids])
            for name in (first, second)}
    log.info("pair %s/%s: lists in %.0f s", first, second, time.perf_counter() - started)
    experiments = []
    shown = {m: float(pack.likes_per_search(people).mean()) for m, pack in packs.items()}
    no_preference = []
    for e in range(args.no_preference):
        rng = np.random.default_rng([args.seed, PAIRS.index((first, second)), e, 0])
        weights = zipf_weights(rng, len(qids), args.zipf)
        found: dict[str, Crossing] = {}
        for method, group in groupby_lists(variants).items():
            found |= play_interleaving(packs[method], weights, 1, group, rng, RANDOM_CLICKS, args)
        found |= play_ab(alone[first], alone[second], weights, 1, 0.01, rng, RANDOM_CLICKS, args)
        no_preference.append(found)
    for e in range(args.experiments):
        rng = np.random.default_rng([args.seed, PAIRS.index((first, second)), e])
        weights = zipf_weights(rng, len(qids), args.zipf)
        orientation = 1 if rng.random() < 0.5 else -1  # +1: the second ranker is the challenger
        truth = orientation * float(weights @ (likes[second] - likes[first]))
        truth_ndcg = orientation * float(weights @ (ndcg[second] - ndcg[first]))
        champion_likes = float(weights @ (likes[first] if orientation > 0 else likes[second]))
        row: dict = {"orientation": orientation, "likes_gap": truth, "relative_gap": truth / champion_likes,
                     "ndcg10_gap": truth_ndcg, "found": {}, "expected": {}}
        for method, group in groupby_lists(variants).items():
            row["found"] |= play_interleaving(packs[method], weights, orientation, group, rng, people, args)
            for v in group:
                row["expected"][v.name] = orientation * packs[method].expected(weights, people, v.likes_only)
        row["found"] |= play_ab(alone[first], alone[second], weights, orientation, abs(truth), rng, people,
                                args)
        experiments.append(row)
    return {"pair": f"{first}/{second}", "queries": len(qids),
            "likes": {first: float(likes[first].mean()), second: float(likes[second].mean())},
            "ndcg10": {first: float(ndcg[first].mean()), second: float(ndcg[second].mean())},
            "likes_per_interleaved_search": shown, "experiments": experiments, "no_preference": no_preference}


def chosen_variants(args: argparse.Namespace) -> list[Variant]:
    return [v for v in VARIANTS if not args.variants or v.name in args.variants]


def groupby_lists(variants: list[Variant]) -> dict[str, list[Variant]]:
    out: dict[str, list[Variant]] = {}
    for v in variants:
        out.setdefault(v.lists, []).append(v)
    return out


def summarise(rows: list[dict], name: str, cap: int, floor: bool) -> dict:
    """One method over some experiments: right, wrong, undecided, false promotions, impressions."""
    decision_key, at_key = ("decision_floor", "at_floor") if floor else ("decision", "at")
    decisions = [getattr(r["found"][name], decision_key) for r in rows]
    used = [getattr(r["found"][name], at_key) or cap for r in rows]
    truth = [1 if r["likes_gap"] > 0 else -1 for r in rows]
    worse = [i for i, t in enumerate(truth) if t < 0]
    decided = [n for n, d in zip(used, decisions, strict=True) if d]
    out = {"experiments": len(rows),
           "right": sum(d == t for d, t in zip(decisions, truth, strict=True)),
           "wrong": sum(d == -t for d, t in zip(decisions, truth, strict=True)),
           "undecided": sum(d == 0 for d in decisions),
           "challenger_worse": len(worse), "false_promotions": sum(decisions[i] == 1 for i in worse),
           "agree_ndcg10": sum(d == (1 if r["ndcg10_gap"] > 0 else -1)
                               for d, r in zip(decisions, rows, strict=True)),
           "median_impressions": statistics.median(used) if used else None,
           "median_impressions_decided": statistics.median(decided) if decided else None}
    if name in rows[0]["expected"]:
        out["favours_the_better_given_endless_traffic"] = sum(
            (r["expected"][name] > 0) == (r["likes_gap"] > 0) for r in rows)
    return out


def buckets(rows: list[dict], edges: tuple[float, ...]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        gap = abs(r["relative_gap"])
        low = max(e for e in (0.0, *edges) if e <= gap)
        high = min((e for e in edges if e > gap), default=None)
        out.setdefault(f"{low:.0%}-{high:.0%}" if high else f">={low:.0%}", []).append(r)
    return dict(sorted(out.items(), key=lambda kv: float(kv[0].split("%")[0].lstrip(">="))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--experiments", type=int, default=200, help="experiments per pair")
    parser.add_argument("--pairs", nargs="*", default=None, help="first/second, e.g. v0/no_prf")
    parser.add_argument("--variants", nargs="*", default=None, help="method names (all by default)")
    parser.add_argument("--candidates", type=int, default=50, help="first-stage results each ranker orders")
    parser.add_argument("--draws", type=int, default=128,
                        help="inference ids per query for probabilistic interleaving's lists")
    parser.add_argument("--cap", type=int, default=40_000, help="most impressions of one experiment")
    parser.add_argument("--floor", type=int, default=200, help="the product's minimum before any decision")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--effect", type=float, default=0.07, help="the sign rule's tuned win-rate effect")
    parser.add_argument("--clip", type=float, default=CLIP, help="per-impression credit clipped to +-clip")
    parser.add_argument("--zipf", type=float, default=1.0, help="query popularity exponent of the traffic")
    parser.add_argument("--indifference", type=float, default=0.01,
                        help="relative gaps in likes per search below this are reported apart, never dropped")
    parser.add_argument("--no-preference", type=int, default=50,
                        help="experiments per pair where people like at random: every decision is an error")
    parser.add_argument("--seed", type=int, default=1)
    add_output_arguments(parser, "interleaving_study", workdir="study")
    args = parser.parse_args()
    collection = start_harness(args.dataset)
    started = time.perf_counter()
    assert agrees_with_the_product(args.alpha), "the vectorised rule differs from shared/online/betting.py"
    rankings = load_rankings(collection, args)
    chosen = [tuple(p.split("/")) for p in args.pairs] if args.pairs else PAIRS
    pairs = [run_pair(first, second, rankings, collection, args) for first, second in chosen]
    names = [v.name for v in chosen_variants(args)] + ["ab/likes/mean", "ab/likes/normal"]
    rows = [r for p in pairs for r in p["experiments"]]
    clear = [r for r in rows if abs(r["relative_gap"]) >= args.indifference]
    result = {
        "conditions": {k: str(v) for k, v in vars(args).items()} | {
            "people": People().parameters(), "random_clicks": RANDOM_CLICKS.parameters(),
            "truth": ("likes per search of each ranker's list shown alone, weighted by the experiment's "
                      "traffic"),
            "traffic": ("per experiment: Zipf popularity over all queries in a random order; the champion "
                        "by a coin"),
            "load_average": load_average(), "cpus": os.cpu_count()},
        "overall": {name: {"strict": summarise(rows, name, args.cap, True),
                           f"gap_at_least_{args.indifference:.0%}": summarise(clear, name, args.cap, True),
                           "no_floor": summarise(rows, name, args.cap, False)} for name in names},
        "by_gap": {bucket: {name: summarise(group, name, args.cap, True) | {
            "no_floor_median_impressions": summarise(group, name, args.cap, False)["median_impressions"]}
            for name in names} for bucket, group in buckets(rows, (0.01, 0.03, 0.1)).items()},
        "no_preference": {name: {"experiments": sum(len(p["no_preference"]) for p in pairs),
                                 "decided": sum(f[name].decision_floor != 0 for p in pairs
                                                for f in p["no_preference"]),
                                 "decided_no_floor": sum(f[name].decision != 0 for p in pairs
                                                         for f in p["no_preference"])} for name in names},
        "by_pair": {p["pair"]: {"likes": p["likes"], "ndcg10": p["ndcg10"], "queries": p["queries"],
                                "likes_per_interleaved_search": p["likes_per_interleaved_search"],
                                "methods": {name: summarise(p["experiments"], name, args.cap, True) | {
                                    "no_floor_median_impressions": summarise(
                                        p["experiments"], name, args.cap, False)["median_impressions"]}
                                    for name in names}} for p in pairs},
        "total_s": time.perf_counter() - started,
    }
    write_json(args.out, result)
    print(json.dumps(result["overall"], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
