"""Version 0's pseudo-relevance feedback: where its expansion comes from and what it scores."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

from shared.ml.ranking.pipeline import RankingModel, fuse, version_zero
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.loading import embed
from shared.ml.training.dataset import Pair
from shared.ml.training.evaluate import evaluate_pairs
from shared.records import Resource
from shared.settings import Settings
from tools.notebook import score_difference

T = TypeVar("T", bound=torch.nn.Module)

TEXTS = [
    ("Wing flutter", "Flutter of a swept wing: aeroelastic divergence and torsional stiffness."),
    ("Flutter testing", "Wing flutter in the wind tunnel: aeroelastic models, stiffness and damping."),
    ("Aeroelastic divergence", "Torsional stiffness sets the divergence speed of an aeroelastic structure."),
    ("Boundary layers", "Laminar boundary layer transition on a flat plate at supersonic speed."),
    ("Heat transfer", "Heat transfer in a hypersonic boundary layer with a cooled wall."),
]


@pytest.fixture(scope="module")
def index(tiny_model: Path) -> tuple[CatalogueIndex, RankingModel]:
    resources = [Resource(id=f"r{i}", title=t, description=d) for i, (t, d) in enumerate(TEXTS)]
    settings = Settings(base_model=str(tiny_model), embedding_model=str(tiny_model), pseudo_relevance_docs=2)
    model = RankingModel.load(version_zero(settings), None, "cpu")
    return CatalogueIndex(resources, embed(model.embedder, [r.text for r in resources])), model


def lexical_first_pass(model: RankingModel) -> RankingModel:
    """Version 0 with its first pass on BM25 alone: the tiny model's dense scores are random,
    and here the two flutter resources must be the first pass's best two."""
    weights = {**model.spec.weights, "dense": 0.0}
    return RankingModel(spec=model.spec.model_copy(update={"weights": weights}), embedder=model.embedder)


def test_expansion_terms_are_what_the_best_results_share_minus_the_query(
        index: tuple[CatalogueIndex, RankingModel]) -> None:
    catalogue, _ = index
    terms = catalogue.expansion_terms(np.array([0, 1]), "wing flutter", 4)
    assert len(terms) == 4
    assert "wing" not in terms and "flutter" not in terms
    # In both results: ahead of words that only one of them has.
    assert set(terms[:2]) == {"aeroelast", "stiff"}
    assert terms == catalogue.expansion_terms(np.array([1, 0]), "wing flutter", 4)
    assert catalogue.expansion_terms(np.array([], dtype=np.int64), "wing", 4) == []


def test_version_zero_finds_a_resource_that_shares_no_word_with_the_query(
        index: tuple[CatalogueIndex, RankingModel]) -> None:
    catalogue, model = index
    assert model.spec.kind == "bm25+dense+bm25_prf+dense_prf"
    positions = np.arange(len(catalogue))
    query = "wing flutter"
    scores = lexical_first_pass(model).score(catalogue, query, positions)
    assert {"bm25", "dense", "bm25_prf", "dense_prf", "fused"} <= set(scores)
    # "Aeroelastic divergence" has neither query word; the best results' words reach it.
    assert scores["bm25"][2] == 0 and scores["bm25_prf"][2] > 0
    assert scores["bm25_prf"][3] == scores["bm25_prf"][4] == 0
    plain = fuse({k: scores[k] for k in ("bm25", "dense")}, {"bm25": 1.0, "dense": 1.0})
    assert not np.allclose(plain, scores["fused"])


def test_prf_off_or_unmoved_gives_back_the_plain_scores(index: tuple[CatalogueIndex, RankingModel]) -> None:
    catalogue, model = index
    positions = np.arange(len(catalogue))
    no_prf = RankingModel(spec=model.spec.model_copy(update={"prf_docs": 0}), embedder=model.embedder)
    scores = no_prf.score(catalogue, "wing flutter", positions)
    assert "bm25_prf" not in scores and "dense_prf" not in scores
    assert np.allclose(scores["fused"], fuse(scores, {"bm25": 1.0, "dense": 1.0}))
    # The query's own embedding, not moved at all: the expanded dense score is the dense score.
    still = RankingModel(spec=model.spec.model_copy(update={"prf_beta": 0.0}), embedder=model.embedder)
    scores = still.score(catalogue, "wing flutter", positions)
    assert np.allclose(scores["dense_prf"], scores["dense"], atol=1e-5)
    assert version_zero(Settings(pseudo_relevance_docs=0)).weights == {"bm25": 1.0, "dense": 1.0}


def nudged(model: T) -> T:
    """A copy a step of training away: noise of 1e-3 on every weight."""
    copied = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in copied.parameters():
            param.add_(torch.randn_like(param), alpha=1e-3)
    return copied


def test_score_difference_ignores_float_noise_and_catches_a_changed_model(
        index: tuple[CatalogueIndex, RankingModel]) -> None:
    catalogue, model = index
    pairs = [Pair("wing flutter", f"r{i}", "", int(i < 2)) for i in range(len(TEXTS))]
    evaluated = evaluate_pairs(model, catalogue, pairs)
    assert score_difference(evaluate_pairs(model, catalogue, pairs), evaluated) == 0.0
    # Weights a step of training away: the dense scores move by more than rounding.
    moved = RankingModel(spec=model.spec, embedder=nudged(model.embedder))
    assert score_difference(evaluate_pairs(moved, catalogue, pairs), evaluated) > 1e-5
    reweighted = RankingModel(spec=model.spec.model_copy(update={"weights": {"bm25": 1.0}}),
                              embedder=model.embedder)
    assert score_difference(evaluate_pairs(reweighted, catalogue, pairs), evaluated) == float("inf")


def test_a_cross_encoder_at_weight_zero_is_evaluated_but_not_served(
        index: tuple[CatalogueIndex, RankingModel], tiny_model: Path) -> None:
    """Fusion may give the fine-tuned cross-encoder 0: the saved one must still be checked."""
    catalogue, model = index
    pairs = [Pair("wing flutter", f"r{i}", "", int(i < 2)) for i in range(len(TEXTS))]
    weights = {**model.spec.weights, "cross": 0.0}
    spec = model.spec.model_copy(update={"cross_encoder": "cross", "weights": weights})
    cross = CrossEncoder(str(tiny_model), num_labels=1, max_length=64, device="cpu")
    with_cross = RankingModel(spec=spec, embedder=model.embedder, cross=cross)
    assert "cross" not in with_cross.score(catalogue, "wing flutter", np.arange(len(catalogue)))
    assert all("cross" not in scored for scored in evaluate_pairs(with_cross, catalogue, pairs).scorers)
    evaluated = evaluate_pairs(with_cross, catalogue, pairs, with_cross=True)
    assert all("cross" in scored for scored in evaluated.scorers)
    without = evaluate_pairs(model, catalogue, pairs)
    assert np.allclose(evaluated.scores, without.scores), "fusion leaves it out"
    moved = RankingModel(spec=spec, embedder=model.embedder, cross=nudged(cross))
    assert score_difference(evaluate_pairs(moved, catalogue, pairs, with_cross=True), evaluated) > 1e-5
