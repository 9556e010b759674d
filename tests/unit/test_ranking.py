"""One search's ranking with a challenger beside the champion: shared scores, interleaving, records."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from services.reranker.indexes import Challenger, ServingState
from services.reranker.ranking import rank
from shared.ml.ranking.backends import BackendChoice
from shared.ml.ranking.pipeline import FeedbackMemory, RankingModel, version_zero
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.loading import embed
from shared.online.interleaving import CHALLENGER_PREFIX, TAU, takes_part
from shared.records import Experiment, Resource
from shared.settings import Settings
from tests.conftest import SAMPLE_CATALOGUE

QUERY = "linear algebra for beginners"


@pytest.fixture(scope="module")
def state(tiny_model: Path) -> ServingState:
    resources = [Resource.model_validate_json(line) for line in SAMPLE_CATALOGUE.read_text().splitlines()
                 if line.strip()]
    settings = Settings(base_model=str(tiny_model), embedding_model=str(tiny_model))
    champion = RankingModel.load(version_zero(settings), None, "cpu")
    index = CatalogueIndex(resources, embed(champion.embedder, [r.text for r in resources]))
    top, _ = index.bm25_top(QUERY, 50)
    liked = [(QUERY, resources[p].id, 1) for p in top[-10:]] + [(QUERY, resources[p].id, 0) for p in top[:10]]
    spec = champion.spec.model_copy(update={"version": "v0001",
                                            "weights": {**champion.spec.weights, "memory": 4.0}})
    challenger = RankingModel(spec=spec, embedder=champion.embedder,
                              memory=FeedbackMemory.build(champion.embedder, liked))
    experiment = Experiment(experiment_id="exp-1", kind="challenge", champion="v0", challenger="v0001",
                            share=0.5, alpha=0.05, min_impressions=1, max_impressions=10,
                            max_s=60.0, started_at=datetime(2026, 1, 1, tzinfo=UTC))
    return ServingState(model=champion, index=index, backend=BackendChoice("torch", "test"),
                        challenger=Challenger(model=challenger, experiment=experiment,
                                              backend=BackendChoice("torch", "test")))


def inference_ids(inside: bool, n: int = 3) -> list[str]:
    return [i for i in (f"inference-{k}" for k in range(200)) if takes_part(i, "exp-1", 0.5) == inside][:n]


def test_scores_the_challenger_takes_over_are_the_ones_it_would_compute(state: ServingState) -> None:
    champion, challenger = state.model, state.challenger.model  # type: ignore[union-attr]
    positions, bm25 = state.index.bm25_top(QUERY, 50)
    mine = champion.score(state.index, QUERY, positions, bm25)
    shared = champion.shares_scores_of(challenger)
    assert shared == {"bm25", "query_vector", "dense", "bm25_prf", "dense_prf"}
    handed = {k: v for k, v in mine.items() if k in shared} | {"query_vector": champion.query_vector(QUERY)}
    reused = challenger.score(state.index, QUERY, positions, bm25, reuse=handed)
    alone = challenger.score(state.index, QUERY, positions, bm25)
    assert reused.keys() == alone.keys() and all(np.allclose(reused[k], alone[k]) for k in alone)
    other = RankingModel(spec=challenger.spec.model_copy(update={"prf_docs": 3}), embedder=champion.embedder)
    assert champion.shares_scores_of(other) == {"bm25", "query_vector", "dense"}
    assert champion.shares_scores_of(RankingModel(spec=challenger.spec)) == {"bm25"}


def test_a_search_in_the_share_interleaves_both_rankings_and_records_them(state: ServingState) -> None:
    for inference_id in inference_ids(inside=True):
        ranked = rank(state, QUERY, True, 50, 10, inference_id)
        record = ranked.interleaving
        assert record is not None and record.experiment_id == "exp-1"
        assert (record.champion, record.challenger) == ("v0", "v0001")
        ids = [state.index.resources[ranked.positions[i]].id for i in ranked.order]
        assert len(ids) == len(set(ids)) == 10
        assert ranked.teams is not None and sorted(set(ranked.teams)) == ["challenger", "champion"]
        assert ranked.shares is not None and all(0.0 <= share <= 1.0 for share in ranked.shares)
        assert record.tau == TAU and record.champion_ranking != record.challenger_ranking
        # Results both rankers put first alike would be shared; these rankings differ, so some are not.
        assert any(abs(share - 0.5) > 0.1 for share in ranked.shares)
        assert {CHALLENGER_PREFIX + "fused", CHALLENGER_PREFIX + "memory"} <= set(ranked.scores)
        # The same id ranks the same way again: the log replays.
        again = rank(state, QUERY, True, 50, 10, inference_id)
        assert (again.order, again.teams, again.shares) == (ranked.order, ranked.teams, ranked.shares)


def test_a_search_outside_the_share_or_without_reranking_is_the_champions_alone(state: ServingState) -> None:
    champion_alone = ServingState(model=state.model, index=state.index, backend=state.backend)
    for inference_id in inference_ids(inside=False):
        ranked = rank(state, QUERY, True, 50, 10, inference_id)
        assert ranked.interleaving is None and ranked.teams is None
        assert ranked.order == rank(champion_alone, QUERY, True, 50, 10, inference_id).order
    inside = inference_ids(inside=True, n=1)[0]
    assert rank(state, QUERY, False, 50, 10, inside).interleaving is None


def page_ids(state: ServingState, use_reranker: bool, ranking_id: str, offsets: range, top_k: int = 5,
             **narrowing: object) -> list[str]:
    ids: list[str] = []
    for offset in offsets:
        ranked = rank(state, QUERY, use_reranker, 10, top_k, ranking_id, offset=offset, **narrowing)  # type: ignore[arg-type]
        ids += [state.index.resources[ranked.positions[i]].id for i in ranked.order]
    return ids


def test_pages_continue_one_ranking_reranked_candidates_then_bm25(state: ServingState) -> None:
    champion_alone = ServingState(model=state.model, index=state.index, backend=state.backend)
    bm25 = page_ids(champion_alone, False, "r", range(0, 40, 5))
    assert bm25 == page_ids(champion_alone, False, "r", range(0, 40, 40), top_k=40)  # BM25 order alone
    reranked = page_ids(champion_alone, True, "r", range(0, 40, 5))
    assert len(reranked) == len(set(reranked)) == 40
    assert set(reranked[:10]) == set(bm25[:10]) and reranked[:10] != bm25[:10]
    assert reranked[10:] == bm25[10:]
    beyond = rank(champion_alone, QUERY, True, 10, 5, "r", offset=20)
    assert beyond.reranked == 0 and beyond.rerank_score(0) is None and set(beyond.scores) == {"bm25"}
    straddling = rank(champion_alone, QUERY, True, 10, 5, "r", offset=8)
    assert straddling.rerank_score(1) is not None and straddling.rerank_score(2) is None


def test_a_later_page_continues_the_interleaved_list_of_its_ranking_id(state: ServingState) -> None:
    inside = inference_ids(inside=True, n=1)[0]
    whole = rank(state, QUERY, True, 10, 10, inside)
    assert whole.interleaving is not None
    first, second = (rank(state, QUERY, True, 10, 5, inside, offset=offset) for offset in (0, 5))
    assert page_ids(state, True, inside, range(0, 10, 5)) == [
        state.index.resources[whole.positions[i]].id for i in whole.order]
    assert [*first.teams, *second.teams] == whole.teams  # type: ignore[misc]
    assert second.interleaving is not None and second.interleaving.champion_ranking[:5] == (
        whole.interleaving.champion_ranking[:5])


def test_a_filtered_ranking_reranks_the_best_matching_resources(state: ServingState) -> None:
    narrowing = {"filters": {"level": ["beginner"]}, "facets": ["level", "type"]}
    ranked = rank(state, QUERY, True, 10, 10, "r", **narrowing)  # type: ignore[arg-type]
    shown = [state.index.resources[ranked.positions[i]] for i in ranked.order]
    assert len(shown) == 10 and all(r.level == "beginner" for r in shown)
    assert ranked.reranked == 10 and ranked.total == ranked.facets["level"]["beginner"]
    assert set(ranked.facets["level"]) > {"beginner"}


def test_under_a_filter_both_sides_rank_the_same_filtered_candidates_and_remember_the_query(
        state: ServingState) -> None:
    inside = inference_ids(inside=True, n=1)[0]
    levels = {r.id: r.level for r in state.index.resources}
    narrowed = rank(state, QUERY, True, 50, 10, inside, filters={"level": ["beginner"]})
    plain = rank(state, QUERY, True, 50, 10, inside)
    record = narrowed.interleaving
    assert record is not None and set(record.champion_ranking) <= {r for r, level in levels.items()
                                                                   if level == "beginner"}
    assert {levels[r] for r in record.challenger_ranking} == {"beginner"}
    # The memory answers for the query alone: a remembered resource scores the same with or without a filter.
    memory = CHALLENGER_PREFIX + "memory"

    def remembered(ranked: object) -> dict[str, float]:
        return {state.index.resources[p].id: float(ranked.scores[memory][i])  # type: ignore[attr-defined]
                for i, p in enumerate(ranked.positions[:ranked.reranked])}  # type: ignore[attr-defined]

    both = remembered(narrowed).keys() & remembered(plain).keys()
    assert any(remembered(plain)[r] != 0 for r in both)
    assert all(remembered(narrowed)[r] == remembered(plain)[r] for r in both)
