"""Why the evidence is weighed as it is: offline, in one process, on Cranfield.

Two questions, each answered with the product's own functions (shared/evidence, the training
dataset, the gate's check) on simulated people (tools.people) and version 0's lists:

1. **Learning from what people do.** A stream of searches (Zipf popularity, new queries arriving,
   a quarter of the queries never asked) is played to people; every `--every` searches the
   evidence so far is judged and the feedback memory serves it at once (version 0's fused scores
   plus the memory's weight times each result's value: no online test in between, so this is what
   the evidence can teach at best). What people saw over the last quarter is scored by nDCG@10
   against version 0's lists. Varied: the people (position-based, cascades), the evidence (every
   kind, or ratings alone at the same rates), the worth of an open, and `SHRINK`.
2. **The check that labels are not backwards.** Over many random splits of the queries, honest
   and flipped people act on version 0's lists; the run's pairs are built as the trainer builds
   them, and the gate's check is computed both ways: against the order people saw the results in
   (`shown_order_auc`, the product's) and against BM25 within the shown lists (the check before
   it). Counted: honest evidence rejected, flipped evidence passed. The same on a collection whose
   judgments follow the dense score (a relevant result is one the bi-encoder ranks in a query's
   top 5 of its 50 candidates): there BM25 within the fused lists is biased against honest
   labels, which is how the BM25 check failed on another public collection.

    .venv/bin/python -m bench.studies.evidence --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness.collection import DEFAULT_DATASET, Collection
from bench.harness.measures import ndcg10
from bench.harness.results import add_output_arguments, write_json
from bench.harness.traffic import Stream
from bench.online_replay import Impression as Impression_
from bench.online_replay import interleaved_credit
from shared.evidence import judgments, outcomes
from shared.evidence.judgments import Action, Impression, judge
from shared.evidence.outcomes import voice
from shared.ml.ranking.backends import onnx_cache
from shared.ml.ranking.pipeline import RankingModel, version_zero
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.embedder import load_encoder
from shared.ml.training.dataset import Evidence, build_pairs
from shared.ml.training.evaluate import classification_metrics, shown_order_auc
from shared.online.betting import SequentialTest
from shared.online.credit import Tally
from shared.online.interleaving import interleave
from shared.records import Resource
from shared.settings import Settings
from tools.catalogue import read_catalogue
from tools.people import PEOPLE, Searchers

CANDIDATES = 50


@dataclasses.dataclass
class Query:
    """Version 0 on one query: its candidates, fused, BM25 and dense scores."""

    text: str
    ids: list[str]
    fused: np.ndarray
    bm25: np.ndarray
    dense: np.ndarray

    def top(self, memory: dict[str, float] | None = None, weight: float = 0.0, k: int = 10) -> list[str]:
        score = self.fused + weight * np.array([(memory or {}).get(i, 0.0) for i in self.ids])
        return [self.ids[i] for i in np.argsort(-score, kind="stable")[:k]]


def version_zero_queries(collection: Collection,
                         settings: Settings) -> tuple[dict[str, Query], list[Resource]]:
    resources = list(read_catalogue(collection.corpus))
    v0 = RankingModel.load(version_zero(settings), None, settings.device)
    v0.encoder = load_encoder(v0.embedder, settings.embedding_backend, onnx_cache(settings),
                              settings.torch_threads)
    index = CatalogueIndex(resources, v0.embed_texts([r.text for r in resources]))
    out = {}
    for qid, text in collection.queries.items():
        if not text.strip():
            continue
        positions, bm25 = index.bm25_top(text, CANDIDATES)
        scores = v0.score(index, text, positions, bm25)
        out[qid] = Query(text, [index.resources[p].id for p in positions], np.asarray(scores["fused"]),
                         np.asarray(bm25), np.nan_to_num(np.asarray(scores["dense"])))
    return out, resources


def acts_to_actions(inference_id: str, who: str, shown: list[str], acts: list,
                    evidence: str) -> list[Action]:
    out = []
    for act in acts:
        opened = evidence == "all" and act.dwell_s is not None
        if act.label is None and not opened:
            continue
        out.append(Action(inference_id, shown[act.position], who, label=act.label, opened=opened,
                          dwell_s=act.dwell_s if opened else None))
    return out


def learn(queries: dict[str, Query], qrels: dict[str, dict[str, int]], people: Any, evidence: str,
          seed: int, searches: int, every: int, weight: float) -> dict[str, float]:
    """Question 1 for one configuration: traffic nDCG@10 over the last quarter against version 0."""
    rng = random.Random(seed)
    qids = sorted(queries)
    rng.shuffle(qids)
    stream = Stream(sorted(qids[:round(len(qids) * 0.75)]), searches, rng)
    memory: dict[str, dict[str, float]] = {}
    impressions: list[Impression] = []
    actions: list[Action] = []
    shown_ndcg, base_ndcg, opens, ratings = [], [], 0, 0
    for step in range(searches):
        if step and step % every == 0:
            memory = {}
            for (query, resource_id), j in judge(impressions, actions).items():
                if j.value:
                    memory.setdefault(query, {})[resource_id] = j.value
        qid = stream.at(step)
        shown = queries[qid].top(memory.get(qid), weight)
        inference_id, who = f"i{step}", voice(f"p{step}", None, f"i{step}")
        impressions.append(Impression(inference_id, qid, who, tuple(shown)))
        acts = people.act(shown, qrels[qid], rng)
        opens += sum(a.dwell_s is not None for a in acts)
        ratings += sum(a.label is not None for a in acts)
        actions += acts_to_actions(inference_id, who, shown, acts, evidence)
        if step >= searches * 3 // 4:
            shown_ndcg.append(ndcg10(shown, qrels[qid]))
            base_ndcg.append(ndcg10(queries[qid].top(), qrels[qid]))
    return {"gain": statistics.mean(shown_ndcg) - statistics.mean(base_ndcg),
            "ndcg10_v0": statistics.mean(base_ndcg), "opens_per_search": opens / searches,
            "ratings_per_search": ratings / searches}


def check_labels(queries: dict[str, Query], qrels: dict[str, dict[str, int]],
                 resources: dict[str, Resource], people: Any, seed: int, searches: int,
                 share: float, online: bool = False) -> dict[str, Any]:
    """Question 2 for one split: the gate's check against the shown order and against BM25; with
    `online`, what users decide of a candidate that passed it."""
    rng = random.Random(seed)
    qids = sorted(rng.sample(sorted(queries), round(len(queries) * share)))
    stream = Stream(qids, searches, rng)
    impressions, actions = [], []
    for step in range(searches):
        qid = stream.at(step)
        shown = queries[qid].top()
        inference_id, who = f"i{step}", voice(f"p{step}", None, f"i{step}")
        impressions.append(Impression(inference_id, qid, who, tuple(shown)))
        actions += acts_to_actions(inference_id, who, shown, people.act(shown, qrels[qid], rng), "all")
    evidence = Evidence(examination=None, judgments=judge(impressions, actions))  # type: ignore[arg-type]
    pairs = build_pairs(evidence, resources)
    # The check before: BM25 scores of the pairs, normalised within each query's pairs, pooled.
    labels, scores = [], []
    for qid in {p.query for p in pairs}:
        mine = [p for p in pairs if p.query == qid]
        bm25 = dict(zip(queries[qid].ids, queries[qid].bm25, strict=True))
        values = np.array([bm25.get(p.resource_id, 0.0) for p in mine])
        spread = values.std() or 1.0
        labels += [p.label for p in mine]
        scores += list((values - values.mean()) / spread)
    bm25_auc = classification_metrics(np.array(labels), np.array(scores), 0.0)["auc"] if labels else None
    order = shown_order_auc(pairs)
    out: dict[str, Any] = {"shown_order_auc": order[1] if order else None, "bm25_auc": bm25_auc,
                           "pairs": len(pairs)}
    if online and out["shown_order_auc"] is not None and out["shown_order_auc"] >= 0.5:
        memory: dict[str, dict[str, float]] = {}
        for (query, resource_id), j in evidence.judgments.items():
            if j.value:
                memory.setdefault(query, {})[resource_id] = j.value
        out["online"] = users_decide(queries, qrels, qids, memory, seed)
    return out


def users_decide(queries: dict[str, Query], qrels: dict[str, dict[str, int]], qids: list[str],
                 memory: dict[str, dict[str, float]], seed: int, weight: float = 4.0, floor: int = 200,
                 cap: int = 20_000) -> str:
    """What the online test decides of a candidate that passed the offline check: honest people
    (position-based, informational) act on the product's probabilistic interleaving of version 0
    and the candidate on the split's queries; the betting test decides ("promote", "retire" or
    "undecided" at `cap` impressions)."""
    rng = random.Random(seed + 7)
    people, test, tally = PEOPLE["informational"], SequentialTest(0.05), Tally()
    stream = Stream(qids, cap, rng)
    for n in range(1, cap + 1):
        qid = stream.at(n)
        champion, challenger = queries[qid].top(k=20), queries[qid].top(memory.get(qid), weight, k=20)
        placed = interleave(champion, challenger, 10, seed=f"{seed}-{n}")
        impression = Impression_(query=qid, shown=tuple(p.resource_id for p in placed),
                                 teams=tuple(p.team for p in placed), champion=tuple(champion[:10]),
                                 challenger=tuple(challenger[:10]), shares=tuple(p.share for p in placed))
        acts = people.act(impression.shown, qrels[qid], rng)
        if acts:
            tally = tally.moved(None, interleaved_credit(impression, acts))
        if n >= floor and test.significant(tally.stakes):
            return "promote" if test.favours_challenger(tally.stakes) else "retire"
    return "undecided"


def dense_judged(queries: dict[str, Query], top: int = 5) -> dict[str, dict[str, int]]:
    """A collection whose relevant results are those the bi-encoder ranks highest among a query's
    candidates: where the dense score is the better signal, by construction."""
    return {qid: {q.ids[i]: 1 for i in np.argsort(-q.dense)[:top]} for qid, q in queries.items()}


def rates(rows: list[dict], key: str, honest: bool) -> dict[str, float]:
    """Honest evidence rejected (AUC < 0.5; the product's check reads its 95 % upper bound) or flipped
    evidence passed (AUC >= 0.5), over the splits."""
    values = [r[key] for r in rows if r[key] is not None]
    wrong = [v for v in values if (v < 0.5) == honest]
    return {"splits": len(values), "wrong": len(wrong),
            "rate": len(wrong) / len(values) if values else 0.0,
            "mean_auc": statistics.mean(values) if values else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--searches", type=int, default=5000)
    parser.add_argument("--every", type=int, default=250, help="searches between two judgments")
    parser.add_argument("--memory-weight", type=float, default=Settings().memory_weight)
    parser.add_argument("--splits", type=int, default=40, help="random query splits for the label check")
    parser.add_argument("--split-searches", type=int, default=1000)
    parser.add_argument("--parts", nargs="+", choices=("learning", "labels"), default=["learning", "labels"],
                        help="which of the two questions to answer (the other is kept from --out)")
    add_output_arguments(parser, "evidence_study")
    args = parser.parse_args()
    collection = Collection.load(args.dataset)
    queries, catalogue = version_zero_queries(collection, Settings())
    resources = {r.id: r for r in catalogue}
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    learning = earlier.get("learning", [])
    variants: list[tuple[str, dict[str, float], float]] = [
        ("product", dict(outcomes.OPEN_VALUE), judgments.SHRINK),
        ("shrink 1", dict(outcomes.OPEN_VALUE), 1.0), ("shrink 4", dict(outcomes.OPEN_VALUE), 4.0),
        ("opens worth 0.25", {k: v / 2 for k, v in outcomes.OPEN_VALUE.items()}, judgments.SHRINK),
        ("no quick-return penalty", {**outcomes.OPEN_VALUE, "quick": 0.0}, judgments.SHRINK)]
    defaults = (dict(outcomes.OPEN_VALUE), judgments.SHRINK)
    for name in ("informational", "cascade-informational", "cascade-navigational", "cascade-perfect",
                 "generous-raters") if "learning" in args.parts else ():
        for evidence in ("all", "ratings"):
            tried = variants if (name, evidence) == ("informational", "all") else variants[:1]
            for variant, values, shrink in tried:
                outcomes.OPEN_VALUE.update(values)
                judgments.SHRINK = shrink
                runs = [learn(queries, collection.qrels, PEOPLE[name], evidence, seed, args.searches,
                              args.every, args.memory_weight) for seed in args.seeds]
                row = {"people": name, "evidence": evidence, "variant": variant,
                       "gain": statistics.mean(r["gain"] for r in runs),
                       "gain_by_seed": [round(r["gain"], 4) for r in runs],
                       "opens_per_search": statistics.mean(r["opens_per_search"] for r in runs),
                       "ratings_per_search": statistics.mean(r["ratings_per_search"] for r in runs)}
                learning = [r for r in learning if (r["people"], r["evidence"], r["variant"]) != (
                    name, evidence, variant)] + [row]
                print(f"{name:24s} {evidence:8s} {variant:24s} gain {row['gain']:+.4f} "
                      f"{row['gain_by_seed']}", flush=True)
    outcomes.OPEN_VALUE.update(defaults[0])
    judgments.SHRINK = defaults[1]
    checks: dict[str, Any] = earlier.get("label_check", {}) if "labels" not in args.parts else {}
    for collection_name, qrels in (("cranfield", collection.qrels), ("dense-judged", dense_judged(queries))
                                   ) if "labels" in args.parts else ():
        honest, flipped = PEOPLE["informational"], dataclasses.replace(PEOPLE["informational"], flipped=True)
        rows = {kind: [check_labels(queries, qrels, resources, people, seed, args.split_searches, 0.5,
                                    online=kind == "flipped") for seed in range(args.splits)]
                for kind, people in (("honest", honest), ("flipped", flipped))}
        checks[collection_name] = {
            f"{key}_{kind}": rates(rows[kind], key, kind == "honest")
            for key in ("shown_order_auc", "bm25_auc") for kind in ("honest", "flipped")}
        online = [r["online"] for r in rows["flipped"] if "online" in r]
        checks[collection_name]["flipped_passed_then_users"] = {
            "passed_offline": len(online), "splits": len(rows["flipped"]),
            **{d: online.count(d) for d in ("promote", "retire", "undecided")},
            "promoted_rate": online.count("promote") / len(rows["flipped"])}
        print(collection_name, {k: (v.get("rate"), v.get("mean_auc"))
                                for k, v in checks[collection_name].items()}, flush=True)
    write_json(args.out, {"dataset": str(args.dataset),
                          "settings": {k: str(v) for k, v in vars(args).items()},
                          "people": {name: p.parameters() | {"name": p.name} for name, p in PEOPLE.items()
                                     if isinstance(p, Searchers)},
                          "open_value": outcomes.OPEN_VALUE, "shrink": judgments.SHRINK,
                          "learning": learning, "label_check": checks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
