"""The feedback memory's two scorers, how older versions read, and which weight is surely a gain."""

from __future__ import annotations

import numpy as np

from shared.ml.ranking.pipeline import FeedbackMemory, PipelineSpec, fuse
from shared.ml.training.evaluate import surest_gain


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def memory() -> FeedbackMemory:
    return FeedbackMemory(
        queries=["Wing flutter", "flutter of wings", "heat transfer"],
        vectors=np.stack([unit(1, 0, 0), unit(1, 0.3, 0), unit(0, 0, 1)]),
        labels=[{"a": 1, "b": -1}, {"c": 1, "a": -1}, {"d": 1}],
        neighbours=10, min_similarity=0.4)


def test_own_ratings_are_the_query_itself_whatever_its_case_and_spaces() -> None:
    scores = memory().scores("  wing   FLUTTER ", unit(1, 0, 0), ["a", "b", "c", "d", "e"])
    assert scores["memory"].tolist() == [1.0, -1.0, 0.0, 0.0, 0.0]
    similarity = float(unit(1, 0.3, 0) @ unit(1, 0, 0))
    # Only the other flutter query is near enough; the query does not vote as its own neighbour.
    assert np.allclose(scores["neighbours"], [-similarity, 0.0, similarity, 0.0, 0.0])


def test_a_query_nobody_rated_gets_only_its_neighbours_votes() -> None:
    scores = memory().scores("aeroelastic flutter", unit(1, 0.1, 0), ["a", "c", "d"])
    assert not scores["memory"].any()
    assert scores["neighbours"][0] > 0 > -scores["neighbours"][1] and scores["neighbours"][2] == 0


def test_leaving_the_query_out_drops_its_own_ratings_but_keeps_its_neighbours() -> None:
    mem = memory()
    out = mem.scores("Wing flutter", unit(1, 0, 0), ["a", "b", "c"], exclude="wing flutter")
    assert not out["memory"].any()
    kept = mem.scores("Wing flutter", unit(1, 0, 0), ["a", "b", "c"])["neighbours"]
    assert np.allclose(out["neighbours"], kept)


def test_neighbours_below_the_similarity_or_beyond_the_count_do_not_vote() -> None:
    mem = memory()
    assert not mem.scores("x", unit(0, 1, 0), ["a", "c", "d"])["neighbours"].any()
    mem.neighbours = 1
    one = mem.scores("x", unit(1, 0.1, 0), ["a", "b", "c"])["neighbours"]
    assert one[1] < 0 and one[2] == 0  # only "Wing flutter", the nearest, voted


def test_restricted_memory_forgets_the_other_queries() -> None:
    kept = memory().restricted_to({"heat transfer"})
    assert not kept.scores("Wing flutter", unit(1, 0, 0), ["a", "b"])["memory"].any()
    assert kept.scores("heat transfer", unit(0, 0, 1), ["d"])["memory"].tolist() == [1.0]


def test_older_versions_weigh_the_neighbours_as_they_did_newer_ones_as_they_say() -> None:
    old = PipelineSpec(base_model="m", weights={"bm25": 1.0, "memory": 0.5})
    assert old.weights["neighbours"] == 0.5 and old.kind.endswith("memory+neighbours")
    new = PipelineSpec(base_model="m", weights={"bm25": 1.0, "memory": 4.0, "neighbours": 0.0})
    assert new.weights["neighbours"] == 0.0 and new.kind == "bm25+memory"
    assert PipelineSpec(base_model="m").weights == {"bm25": 1.0, "dense": 1.0}


def test_memory_scores_are_added_raw() -> None:
    scores = {"bm25": np.array([3.0, 2.0, 1.0]), "memory": np.array([0.0, 0.0, 1.0]),
              "neighbours": np.array([0.5, 0.0, 0.0])}
    fused = fuse(scores, {"bm25": 1.0, "memory": 4.0, "neighbours": 0.0})
    assert np.argmax(fused) == 2  # one like at weight 4 beats BM25's best by more than its spread


def test_surest_gain_takes_the_sure_small_gain_not_the_large_spread_one() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0.3, 0.7, 40)
    spread = baseline + np.where(np.arange(40) % 2 == 0, 0.3, -0.25)  # mean +0.025, half the queries lose
    sure = baseline + 0.01 + rng.uniform(0, 0.005, 40)
    assert surest_gain(baseline, [spread, sure]) == 1
    assert surest_gain(baseline, [spread]) is None
    assert surest_gain(baseline, [baseline.copy()]) is None  # a tie is no gain
    assert surest_gain(baseline[:1], [baseline[:1] + 1]) is None  # one query says nothing
