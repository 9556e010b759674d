"""Which swaps teach the click model most for what they cost people: `make online`'s own logged
searches replayed with other ways of exploring.

`make online` leaves each loop's store (`var/online/loop-all-<seed>`). Its searches are replayed as
they were served: an interleaved search shows its logged list; any other search shows the
champion's own list (the logged one, its explored swap undone), then swaps a pair as the design
says (`shared.evidence.clicks.explored`: a share of the searches, a share `top` of the swaps on the
first two results, the others on a pair drawn uniformly). `make online`'s people
(`tools.people.PEOPLE`, position-based, every parameter in the results file) act on each list
with the Cranfield judgments as their truth, and the click model is estimated from the replayed
searches as the trainer estimates it (`estimate`, keyed by ranker). Counted per design, over
`--repeats` replays of each loop: the worst rank's relative error against the people's true
curve (ranks 1-10) and how often it is within 10 %; rank 10's signed error (a bias would show in
its mean); for the default design, how many ranks' 95 % intervals hold the truth; what the swaps
cost people, exactly (the expected nDCG@10 of what was shown, against the champion's own lists,
per search of the whole traffic, interleaved searches included at 0).

    .venv/bin/python -m bench.studies.exploration      # after make online; about 10 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from pathlib import Path
from typing import Any

from bench.harness.collection import DEFAULT_DATASET, Collection
from bench.harness.measures import examination_error, ndcg10
from bench.harness.results import VAR, add_output_arguments, write_json
from shared.evidence.clicks import (
    BOOTSTRAP,
    RANKS,
    TOP_PAIR_SHARE,
    Search,
    estimate,
    explored,
    swap_chances,
    swapped,
)
from shared.ml.training.dataset import impressions_and_actions
from shared.settings import Settings
from shared.store import open_store
from tools.people import PEOPLE

DESIGNS = {"uniform, 10 % (before)": (0.1, 0.0), "half on top, 10 % (product)": (0.1, TOP_PAIR_SHARE),
           "all on top, 10 %": (0.1, 1.0), "uniform, 25 %": (0.25, 0.0), "half on top, 25 %": (0.25, 0.5),
           "uniform, 50 %": (0.5, 0.0), "half on top, 50 %": (0.5, 0.5), "all on top, 50 %": (0.5, 1.0)}
"""Name: (share of the searches outside experiments that swap, share of the swaps on ranks 1-2)."""


async def logged(folder: Path) -> list[tuple[Search, bool]]:
    """A loop's searches as the trainer reads them (newest `evidence_searches`, tests aside), each
    with whether it was interleaved; a plain search's list is the champion's own (swap undone)."""
    store = await open_store(f"sqlite:///{folder / 'eduranker.db'}")
    try:
        inferences = [i for i in await store.recent_inferences(Settings().evidence_searches) if not i.is_test]
        interactions = await store.list_interactions()
    finally:
        await store.close()
    by_id = {i.inference_id: i for i in inferences}
    impressions, _ = impressions_and_actions(inferences, [], interactions)
    out = []
    for impression in impressions:
        interleaved = by_id[impression.inference_id].interleaving is not None
        shown = impression.shown if interleaved else swapped(list(impression.shown),
                                                              by_id[impression.inference_id].explored)
        out.append((Search(impression.query, tuple(shown), frozenset(), impression.ranker), interleaved))
    return out


def swap_cost(searches: list[tuple[Search, bool]], judged: dict[str, dict[str, int]], share: float,
              top: float) -> float:
    """The expected change in nDCG@10 per search that the design's swaps make (exact: every pair
    weighed by its chance)."""
    total = 0.0
    for search, interleaved in searches:
        if interleaved:
            continue
        shown, grades = list(search.shown), judged.get(search.query, {})
        before = ndcg10(shown, grades)
        total += sum(chance * (ndcg10(swapped(shown, at), grades) - before)
                     for at, chance in swap_chances(share, len(shown), top).items())
    return total / len(searches)


def replay(searches: list[tuple[Search, bool]], relevant: dict[str, set[str]], share: float, top: float,
           seed: str, people: str, bootstrap: int = 0) -> dict[str, float]:
    """The click model estimated from one replay, against the people's true curve: the worst rank's
    relative error, rank 10's signed one (a bias would show in its mean) and, with `bootstrap`
    resamples as the trainer draws them, how many ranks' 95 % intervals hold the truth."""
    person, rng = PEOPLE[people], random.Random(seed)
    replayed = []
    for n, (search, interleaved) in enumerate(searches):
        shown = list(search.shown)
        if not interleaved:
            shown = swapped(shown, explored(f"{seed}:{n}", share, len(shown), top))
        acts = person.act(shown[:RANKS], relevant.get(search.query, set()), rng)
        replayed.append(Search(search.query, tuple(shown), frozenset(shown[a.position] for a in acts),
                               search.ranker))
    truth = [1.0 / (k + 1) ** person.decay for k in range(RANKS)]
    estimated = estimate(replayed, bootstrap=bootstrap)
    measured = examination_error(estimated.as_dict(), truth)
    out = {"worst": measured["max_rel_error"], "deepest": estimated.propensity[-1] / truth[-1] - 1}
    if bootstrap:
        out["held"] = measured["intervals_hold"]
        out["deepest_held"] = float(measured["held_by_rank"][-1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=Path, nargs="+",
                        default=sorted((VAR / "online").glob("loop-all-*")))
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--repeats", type=int, default=24, help="replays of each loop per design")
    parser.add_argument("--people", default="informational", choices=sorted(PEOPLE))
    add_output_arguments(parser, "exploration_study")
    args = parser.parse_args()
    if not args.loops:
        parser.error("no loop to replay: run make online first (it leaves var/online/loop-all-*)")
    collection = Collection.load(args.dataset)
    by_text = {text: qid for qid, text in sorted(collection.queries.items(), reverse=True)}
    loops = {}
    for folder in args.loops:
        searches = asyncio.run(logged(folder))
        loops[folder.name] = [(Search(by_text.get(s.query, s.query), s.shown, s.opened, s.ranker), i)
                              for s, i in searches]
    relevant = {q: set(judged) for q, judged in collection.qrels.items()}
    results: dict[str, Any] = {}
    for name, (share, top) in DESIGNS.items():
        product = (share, top) == (Settings().explore_share, TOP_PAIR_SHARE)
        runs = {loop: [replay(searches, relevant, share, top, f"{loop}:{r}", args.people,
                              BOOTSTRAP if product else 0)
                       for r in range(args.repeats)] for loop, searches in loops.items()}
        every = [run for values in runs.values() for run in values]
        worst = [run["worst"] for run in every]
        deepest = [run["deepest"] for run in every]
        costs = {loop: swap_cost(searches, collection.qrels, share, top) for loop, searches in loops.items()}
        results[name] = {
            "share": share, "top": top, "replays": len(every),
            "within_10pct": round(sum(e <= 0.1 for e in worst) / len(every), 3),
            "max_rel_error_median": round(statistics.median(worst), 4),
            "max_rel_error_mean": round(statistics.mean(worst), 4),
            "rank10_signed_error_mean": round(statistics.mean(deepest), 4),
            "rank10_signed_error_sd": round(statistics.stdev(deepest), 4) if len(deepest) > 1 else None,
            "within_10pct_by_loop": {loop: round(sum(run["worst"] <= 0.1 for run in values) / len(values), 3)
                                     for loop, values in runs.items()},
            "ndcg10_cost_per_search": round(statistics.mean(costs.values()), 5),
            "ndcg10_cost_per_search_by_loop": {loop: round(c, 5) for loop, c in costs.items()}}
        if product:  # the intervals as the trainer draws them (the bootstrap is slow: this design only)
            held = [run["held"] for run in every]
            deepest_held = [run["deepest_held"] for run in every]
            results[name] |= {"bootstrap": BOOTSTRAP, "intervals_hold_mean": round(statistics.mean(held), 2),
                              "rank10_interval_holds": round(statistics.mean(deepest_held), 3)}
        print(f"{name:28s} within 10 % in {results[name]['within_10pct']:.0%} of {len(every)} replays, "
              f"median worst error {results[name]['max_rel_error_median']:.3f}, nDCG@10 per search "
              f"{results[name]['ndcg10_cost_per_search']:+.5f}", flush=True)
    write_json(args.out, {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "people": PEOPLE[args.people].parameters(),
        "searches_per_loop": {loop: len(s) for loop, s in loops.items()},
        "interleaved_per_loop": {loop: sum(i for _, i in s) for loop, s in loops.items()},
        "designs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
