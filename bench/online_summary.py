"""What `python -m bench.online` measured, summed up over its seeds: sensitivity, safety, what users saw.

"The worse ranker" is the one whose list, shown alone, the judgments say these simulated people
like less (likes per search, their attention read into the judgments); nDCG@10's verdict is kept
beside it. Pairs closer than `INDIFFERENCE` (relative, in likes per search) are counted apart as
well, never instead: the strict figure comes first.
"""

from __future__ import annotations

import statistics

INDIFFERENCE = 0.01


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _replays(mine: list[dict], method: str, floor: str, field: str = "median_impressions") -> float:
    return _median([p[f"resampled_{method}"][floor][field] for p in mine])


def _verdicts(mine: list[dict], key: str) -> list[str]:
    return ["undecided" if p[key] is None else "right" if p[key] else "wrong" for p in mine]


def sensitivity(all_pairs: list[dict]) -> dict:
    """Per pair: the impressions each method needs to decide (medians over seeds of the replays'
    medians), without the product's minimum before any decision and with it."""
    out = {}
    for pair in sorted({p["pair"] for p in all_pairs}):
        mine = [p for p in all_pairs if p["pair"] == pair]
        inter, ab = _replays(mine, "interleaving", "no_floor"), _replays(mine, "ab", "no_floor")
        inter_floor = _replays(mine, "interleaving", "with_floor")
        ab_floor = _replays(mine, "ab", "with_floor")
        horizons = [p["fixed_horizon_80_power"] for p in mine]
        fixed_i = _median([h["interleaving"] for h in horizons if "interleaving" in h])
        fixed_ab = _median([h["ab"] for h in horizons if "ab" in h])
        fields = ("runs", "right", "wrong", "undecided")
        out[pair] = {
            "impressions_to_decide_interleaving": inter, "impressions_to_decide_ab": ab,
            "ratio": ab / inter if inter else float("nan"),
            "with_floor": {"interleaving": inter_floor, "ab": ab_floor,
                           "ratio": ab_floor / inter_floor if inter_floor else float("nan")},
            "ab_normal_mixture_reference": _replays(mine, "ab_normal", "no_floor"),
            "replays": {m: {f: sum(p[f"resampled_{m}"]["with_floor"][f] for p in mine) for f in fields}
                        for m in ("interleaving", "ab", "ab_normal")},
            "fixed_horizon_interleaving": fixed_i, "fixed_horizon_ab": fixed_ab,
            "fixed_horizon_ratio": fixed_ab / fixed_i if fixed_i else float("nan"),
            "real_decisions": _verdicts(mine, "decided_right"),
            "real_decisions_by_ndcg10": _verdicts(mine, "decided_right_ndcg10"),
            "relative_gaps": [round(p["relative_gap"], 4) for p in mine]}
    return out


def false_promotions(all_pairs: list[dict], pairs: list[dict], loops: list[dict]) -> dict:
    """Promotions of the worse ranker: the services' own experiments (pairs, the flipped challenger,
    the loop's challengers) and the replays of the pairs, as counts."""
    found = [p["by_judgments"] | {"decision": p["decided"]} for p in all_pairs if p["decided"] is not None]
    found += [run["safety"]["flipped_judged"] for run in pairs if run.get("safety", {}).get("flipped_judged")]
    found += [j for loop in loops for j in loop["judged_challenges"]]
    judged = [{"decision": j["decision"], "challenger_likes": j["challenger_likes"],
               "champion_likes": j["champion_likes"], "challenger_ndcg": j["challenger"],
               "champion_ndcg": j["champion"]} for j in found]

    def counted(rows: list[dict], worse: str = "likes") -> dict:
        challenger_worse = [r for r in rows if r[f"challenger_{worse}"] < r[f"champion_{worse}"]]
        wrong = sum(r["decision"] == "promote" for r in challenger_worse)
        return {"experiments": len(rows), "challenger_worse": len(challenger_worse),
                "false_promotions": wrong, "rate": wrong / len(challenger_worse) if challenger_worse else 0.0,
                "rate_of_all_experiments": wrong / len(rows) if rows else 0.0}

    apart = [r for r in judged if abs(r["challenger_likes"] - r["champion_likes"])
             >= INDIFFERENCE * max(r["champion_likes"], 1e-9)]
    worse_pairs = [p for p in all_pairs if p["right_winner"] == "champion"]
    replays = {floor: {"replays": sum(p["resampled_interleaving"][floor]["runs"] for p in worse_pairs),
                       "false_promotions": sum(p["resampled_interleaving"][floor]["false_promotions"]
                                               for p in worse_pairs)}
               for floor in ("with_floor", "no_floor")}
    return {"real": counted(judged), "real_by_ndcg10": counted(judged, "ndcg"),
            f"real_apart_by_{INDIFFERENCE:.0%}": counted(apart),
            "replays_with_the_worse_challenger": replays}


def flipped_outcome(safety: dict) -> str:
    """What became of one seed's challenger trained on flipped labels."""
    verdict = safety.get("flipped_rejected_online")
    if verdict is None:
        return f"refused offline: {safety.get('flipped_run', {}).get('detail', '')}".rstrip(": ")
    decision = safety.get("flipped_experiment", {}).get("decision")
    return "retired by users" if verdict else f"not retired by users ({decision or 'undecided'})"


def aggregate(pairs: list[dict], loops: list[dict]) -> dict:
    all_pairs = [p for run in pairs for p in run["pairs"]]
    measured = sensitivity(all_pairs)
    wrong = false_promotions(all_pairs, pairs, loops)
    safety = [run["safety"] for run in pairs if run.get("safety")]
    replays = wrong["replays_with_the_worse_challenger"]["with_floor"]
    out = {
        "sensitivity": measured,
        "impressions_to_decide_interleaving": {k: v["impressions_to_decide_interleaving"]
                                               for k, v in measured.items()},
        "impressions_to_decide_ab": {k: v["impressions_to_decide_ab"] for k, v in measured.items()},
        "false_promotion_rate": wrong["real"]["rate"],
        "experiments_judged": wrong["real"]["experiments"],
        "false_promotions": wrong,
        "false_promotion_rate_resampled": (replays["false_promotions"] / replays["replays"]
                                           if replays["replays"] else 0.0),
        # Users never kept a challenger trained on flipped labels: each was retired by them, or
        # refused by the offline checks before they saw it (None: no seed ran the check).
        "flipped_rejected_online": (all(s["flipped_rejected_online"] is not False for s in safety)
                                    if safety else None),
        "flipped_outcomes": [flipped_outcome(s) for s in safety],
        "rollback_happened": all(s["rollback_happened"] for s in safety) if safety else None,
        "rollback_impressions": [s["rollback_impressions"] for s in safety],
    }
    if loops:
        out |= {
            "ndcg10_traffic_v0": statistics.mean(r["ndcg10_traffic_v0"] for r in loops),
            "ndcg10_traffic_final": statistics.mean(r["ndcg10_traffic_final"] for r in loops),
            "traffic_gain_by_seed": [r["ndcg10_traffic_final"] - r["ndcg10_traffic_v0"] for r in loops],
            "traffic_gain": statistics.mean(r["ndcg10_traffic_final"] - r["ndcg10_traffic_v0"]
                                            for r in loops),
            "ndcg10_held_out_v0": statistics.mean(r["ndcg10_held_out_v0"] for r in loops),
            "ndcg10_held_out_final": statistics.mean(r["ndcg10_held_out_final"] for r in loops),
            "held_out_gain_by_seed": [r["ndcg10_held_out_final"] - r["ndcg10_held_out_v0"] for r in loops],
            "held_out_paired_by_seed": [r.get("held_out_paired") for r in loops]}
    if pairs:
        out["latency"] = {k: statistics.mean(run["latency"][k] for run in pairs) for k in pairs[0]["latency"]}
    return out
