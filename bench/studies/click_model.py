"""Where people look, recovered from replayed traffic with a known truth: the click model
(`shared/evidence/clicks.py`) as the product runs it, on searches whose examination curve is set.

People are position-based (rank k examined with probability `truth[k]`, 1/rank unless said; an
examined result opened with probability 0.9 if relevant, 0.4 if not: the "informational" user of
Hofmann, Whiteson and de Rijke 2011). Queries come in a Zipf stream; each has two rankings of its
resources (noisy sorts by relevance). Each search is, as in the product:

- with probability `interleaved`, an experiment interleaving the two (`shared.online.interleaving`);
- otherwise the champion's list, two neighbours swapped on `explore` of the searches
  (`clicks.explored`, the product's `EDURANKER_EXPLORE_SHARE`).

Its ranker is the experiment or the champion, as `dataset.estimate_examination` keys it. Scenarios:

- `interleaved half`: half the searches in an experiment (an experiment runs for most of a day);
- `little variation`: a fifth;
- `page fold`: people who drop off after rank 5 (1, .75, .55, .5, .45, .3, .28, .2, .19, .18), a
  curve no power law fits;
- `never varied`: one ranking, no experiment, no swaps: nothing can be estimated, the prior stands;
- `versions that learn`: each version (every 400 searches) lifts what was opened under the ones
  before, as a version trained on opens does; no experiment, 10 % swaps. Estimated per ranker (the
  product) and, for comparison, across versions.

Counted per seed: each rank's relative error against the truth, the worst of ranks 1-10, and how
many of the 10 truths fall inside the 95 % interval.

    .venv/bin/python -m bench.studies.click_model      # about a minute; bench/results/click_model.json
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
from dataclasses import dataclass
from typing import Any

from bench.harness.measures import examination_error
from bench.harness.results import add_output_arguments, write_json
from shared.evidence.clicks import RANKS, Examination, Search, estimate, explored, prior, swapped
from shared.evidence.judgments import Impression
from shared.ml.training.dataset import estimate_examination
from shared.online.interleaving import interleave

PAGE_FOLD = (1.0, 0.75, 0.55, 0.5, 0.45, 0.3, 0.28, 0.2, 0.19, 0.18)


@dataclass(frozen=True)
class Traffic:
    """The replayed people and catalogue; every field goes into the results file."""

    queries: int = 120
    resources: int = 30
    relevant_share: float = 0.25
    click: tuple[float, float] = (0.4, 0.9)
    """Open probability of an examined result: (not relevant, relevant)."""
    ranking_noise: float = 1.0
    """Each ranking sorts by relevance (0 or 1) plus N(0, this): two such rankings per query."""
    zipf: float = 1.0
    interleaved: float = 0.5
    explore: float = 0.1
    examined: tuple[float, ...] = tuple(float(p) for p in prior())

    def searches(self, count: int, seed: int) -> list[Search]:
        """`count` searches and their opens, each keyed by its ranker as the product keys it."""
        rng = random.Random(seed)
        relevant = {q: {d for d in range(self.resources) if rng.random() < self.relevant_share}
                    for q in range(self.queries)}

        def ranking(q: int) -> list[str]:
            noisy = {d: (d in relevant[q]) + rng.gauss(0, self.ranking_noise) for d in range(self.resources)}
            return [str(d) for d in sorted(noisy, key=lambda d: -noisy[d])]

        champion = {q: ranking(q) for q in range(self.queries)}
        challenger = {q: ranking(q) for q in range(self.queries)}
        weights = [1 / (i + 1) ** self.zipf for i in range(self.queries)]
        out = []
        for n in range(count):
            q = rng.choices(range(self.queries), weights)[0]
            if rng.random() < self.interleaved:
                placed = interleave(champion[q][:20], challenger[q][:20], RANKS, str(n))
                shown, ranker = [p.resource_id for p in placed], "experiment"
            else:
                swap = explored(f"i{n}", self.explore, RANKS)
                shown, ranker = swapped(champion[q][:RANKS], swap), "champion"
            out.append(Search(str(q), tuple(shown), self.opened(shown, relevant[q], rng), ranker))
        return out

    def opened(self, shown: list[str], relevant: set[int], rng: random.Random) -> frozenset[str]:
        return frozenset(d for k, d in enumerate(shown) if rng.random() < self.examined[k]
                         and rng.random() < self.click[int(d) in relevant])


def learning_versions(searches: int, seed: int, traffic: Traffic = Traffic(queries=80, resources=20),
                      every: int = 400) -> tuple[list[Impression], list[Any]]:
    """Position-based people under versions that each lift what was opened before them (a version
    trained on the opens), `traffic.explore` of the searches swapping neighbours: impressions keyed
    by version, and the opens as the trainer reads them (inference id, resource id)."""
    rng = random.Random(seed)
    n_docs = traffic.resources
    relevant = {q: {d for d in range(n_docs) if rng.random() < traffic.relevant_share}
                for q in range(traffic.queries)}
    base = {q: {d: rng.gauss(0, traffic.ranking_noise) for d in range(n_docs)}
            for q in range(traffic.queries)}
    opens = {q: dict.fromkeys(range(n_docs), 0) for q in range(traffic.queries)}
    ranking = {q: sorted(range(n_docs), key=lambda d, q=q: -base[q][d]) for q in range(traffic.queries)}
    weights = [1 / (i + 1) ** traffic.zipf for i in range(traffic.queries)]
    impressions, interactions, version = [], [], 0
    for n in range(searches):
        if n and n % every == 0:
            version += 1
            ranking = {q: sorted(range(n_docs), key=lambda d, q=q: -(base[q][d] + opens[q][d]))
                       for q in range(traffic.queries)}
        q = rng.choices(range(traffic.queries), weights)[0]
        shown = swapped([str(d) for d in ranking[q][:RANKS]], explored(f"i{n}", traffic.explore, RANKS))
        impressions.append(Impression(f"i{n}", str(q), f"u{n}", tuple(shown), f"v{version}"))
        for d in traffic.opened(shown, relevant[q], rng):
            opens[q][int(d)] += 1
            interactions.append(OpenedResult(f"i{n}", d))
    return impressions, interactions


@dataclass(frozen=True)
class OpenedResult:
    """An open as `estimate_examination` reads an interaction."""

    inference_id: str
    resource_id: str


def errors(examination: Examination, truth: tuple[float, ...]) -> dict[str, Any]:
    """`examination_error` (as `make online` measures it), with the estimate itself."""
    return {**examination_error(dataclasses.asdict(examination), truth),
            "propensity": [round(p, 4) for p in examination.propensity]}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    worst = [r["max_rel_error"] for r in rows]
    return {"worst_mean": round(statistics.mean(worst), 4), "worst_max": round(max(worst), 4),
            "intervals_hold_mean": round(statistics.mean(r["intervals_hold"] for r in rows), 2),
            "estimated_ranks_min": min(r["estimated_ranks"] for r in rows), "seeds": rows}


def report(name: str, result: dict[str, Any]) -> None:
    print(f"{name:36s} worst rank off {result['worst_mean']:.3f} on average (at most "
          f"{result['worst_max']:.3f}), truth inside {result['intervals_hold_mean']}/10", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--searches", type=int, default=5000)
    parser.add_argument("--bootstrap", type=int, default=40, help="resamples for the 95 %% intervals")
    add_output_arguments(parser, "click_model")
    args = parser.parse_args()
    scenarios = {"interleaved half": Traffic(), "little variation": Traffic(interleaved=0.2),
                 "page fold": Traffic(examined=PAGE_FOLD),
                 "never varied": Traffic(interleaved=0.0, explore=0.0)}
    results: dict[str, Any] = {}
    for name, traffic in scenarios.items():
        rows = [errors(estimate(traffic.searches(args.searches, seed), bootstrap=args.bootstrap, seed=seed),
                       traffic.examined) for seed in args.seeds]
        results[name] = {"traffic": dataclasses.asdict(traffic), **summary(rows)}
        report(name, results[name])
    learning = Traffic(queries=80, resources=20, interleaved=0.0)
    for keyed in ("per ranker", "across versions"):
        rows = []
        for seed in args.seeds:
            impressions, opens = learning_versions(args.searches, seed, learning)
            if keyed == "across versions":
                impressions = [dataclasses.replace(i, ranker="") for i in impressions]
            rows.append(errors(estimate_examination(impressions, opens), learning.examined))
        name = f"versions that learn, {keyed}"
        results[name] = {"traffic": dataclasses.asdict(learning), "version_every": 400, **summary(rows)}
        report(name, results[name])
    write_json(args.out, {"settings": {k: str(v) for k, v in vars(args).items()}, "scenarios": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
