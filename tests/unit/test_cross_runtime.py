"""The cross-encoder's share of a search: how deep it reranks, its score cache, its runtime choice.

Depth and cache change nothing but speed on a fixed version; a runtime that moves the order is
refused by `auto`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

from shared.ml.ranking.backends import calibrate, calibration_sets
from shared.ml.ranking.pipeline import PipelineSpec, RankingModel, zscore
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.choice import pick_backend
from shared.ml.runtime.loading import Bf16Linear, bf16_twin, cross_backend, cross_scores, embed, load_embedder
from shared.ml.runtime.onnx import load_onnx_cross_encoder
from shared.ml.runtime.pair_tokens import PairTokens
from shared.ml.runtime.score_cache import ScoreCache
from shared.records import Resource

QUERIES = ("wing flutter", "boundary layer heat transfer", "supersonic flow over a plate")
WORDS = ("wing", "flutter", "boundary", "layer", "heat", "transfer", "supersonic", "flow", "plate",
         "stiffness", "damping", "laminar", "shock", "nozzle", "pressure", "drag")


@pytest.fixture(scope="module")
def served(tiny_model: Path) -> tuple[CatalogueIndex, RankingModel]:
    rng = np.random.default_rng(3)
    resources = [Resource(id=f"r{i}", title=" ".join(rng.choice(WORDS, 3)),
                          description=" ".join(rng.choice(WORDS, int(rng.integers(4, 30)))))
                 for i in range(40)]
    torch.manual_seed(0)
    cross = CrossEncoder(str(tiny_model), num_labels=1, max_length=64)
    embedder = load_embedder(str(tiny_model), 64)
    spec = PipelineSpec(version="v0001", base_model=str(tiny_model), embedding_model=str(tiny_model),
                        cross_encoder=".", weights={"bm25": 1.0, "dense": 1.0, "cross": 1.0}, max_length=64)
    index = CatalogueIndex(resources, embed(embedder, [r.text for r in resources]))
    return index, RankingModel(spec=spec, embedder=embedder, cross=cross)


def candidates(index: CatalogueIndex, query: str, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    top, bm25 = index.bm25_top(query, n)
    assert top.size == n, "the catalogue must give enough candidates to rerank past the depth"
    return top, bm25


def test_a_depth_past_the_candidates_changes_nothing(served: tuple[CatalogueIndex, RankingModel]) -> None:
    index, model = served
    deep = dataclasses.replace(model, depth=1000)
    for query in QUERIES:
        top, bm25 = candidates(index, query)
        np.testing.assert_array_equal(deep.score(index, query, top, bm25)["fused"],
                                      model.score(index, query, top, bm25)["fused"])


def test_the_depth_reranks_the_best_by_the_other_scorers_as_full_depth_would(
        served: tuple[CatalogueIndex, RankingModel]) -> None:
    index, model = served
    shallow = dataclasses.replace(model, depth=8)
    first = dataclasses.replace(model, spec=model.spec.model_copy(
        update={"weights": {"bm25": 1.0, "dense": 1.0}}))
    for query in QUERIES:
        top, bm25 = candidates(index, query)
        scores = shallow.score(index, query, top, bm25)
        full = model.score(index, query, top, bm25)
        before = np.argsort(-first.score(index, query, top, bm25)["fused"], kind="stable")
        reranked, rest = before[:8], before[8:]
        order = np.argsort(-scores["fused"], kind="stable")
        # The first eight are the first stage's best eight, scored by the cross-encoder as at full depth
        # and ordered by the fused score of full depth but for the cross-encoder's scale.
        assert set(order[:8]) == set(reranked.tolist())
        np.testing.assert_allclose(scores["cross"][reranked], full["cross"][reranked], rtol=1e-5)
        cross = full["cross"][reranked]
        others = full["fused"][reranked] - zscore(full["cross"])[reranked]
        expected = reranked[np.argsort(-(others + zscore(cross)), kind="stable")]
        np.testing.assert_array_equal(order[:8], expected)
        # The rest follow in the first stage's order, unscored by the cross-encoder.
        np.testing.assert_array_equal(order[8:], rest)
        assert np.isnan(scores["cross"][rest]).all()


def test_the_cache_gives_the_same_answers_and_scores_each_pair_once(
        served: tuple[CatalogueIndex, RankingModel]) -> None:
    index, model = served
    cache = ScoreCache(10_000)
    cached = dataclasses.replace(model, depth=10, cross_cache=cache)
    plain = dataclasses.replace(model, depth=10)
    for query in QUERIES:
        top, bm25 = candidates(index, query)
        expected = plain.score(index, query, top, bm25)
        for _ in range(2):
            got = cached.score(index, query, top, bm25)
            for name in expected:
                np.testing.assert_array_equal(got[name], expected[name])
    assert cache.misses == 10 * len(QUERIES) and cache.hits == 10 * len(QUERIES)
    assert cache.info()["hit_rate"] == 0.5 and len(cache) == 30


def test_the_cache_misses_an_edited_text_and_stays_within_its_bound() -> None:
    calls: list[list[str]] = []

    def compute(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([len(t) for t in texts], dtype=np.float32)

    cache = ScoreCache(3)
    np.testing.assert_array_equal(cache.scores("q", ["a", "bb", "ccc"], compute), [1, 2, 3])
    np.testing.assert_array_equal(cache.scores("q", ["bb", "a", "edited"], compute), [2, 1, 6])
    assert calls == [["a", "bb", "ccc"], ["edited"]]  # only the edited text is scored again
    assert len(cache) == 3  # "ccc", the least recently used, made room
    cache.scores("q", ["ccc"], compute)
    cache.scores("another query", ["a"], compute)  # a pair is the query and the text
    assert calls[-2:] == [["ccc"], ["a"]]
    assert ScoreCache(0).scores("q", ["a"], compute).tolist() == [1.0] and calls[-1] == ["a"]


def test_auto_refuses_a_runtime_that_moves_the_order(served: tuple[CatalogueIndex, RankingModel]) -> None:
    """bf16 is kept only where it ranks like fp32; a runtime whose scores move the top 10 is not."""
    index, model = served
    sets = calibration_sets(index)
    bf16 = dataclasses.replace(model, cross=bf16_twin(model.cross))
    assert cross_backend(bf16.cross) == "torch-bf16" and cross_backend(model.cross) == "torch"
    noisy_cross = bf16_twin(model.cross)
    with torch.no_grad():
        for p in noisy_cross.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    noisy = dataclasses.replace(model, cross=noisy_cross)
    speeds, agrees = calibrate({"torch": model, "torch-bf16": noisy}, index, sets)
    assert agrees == {"torch": True, "torch-bf16": False}
    assert pick_backend({**speeds, "torch-bf16": speeds["torch"] * 10}, agrees)[0] == "torch"


def test_the_bf16_copy_multiplies_in_bf16_and_keeps_the_residual_stream_in_fp32(
        served: tuple[CatalogueIndex, RankingModel]) -> None:
    """Rounding the residual stream at every layer is what swapped fp32's near-ties; the products
    are what bf16 speeds up."""
    index, model = served
    twin = bf16_twin(model.cross).model
    linears = [(name, m) for name, m in twin.named_modules() if isinstance(m, (torch.nn.Linear, Bf16Linear))]
    assert all(isinstance(m, Bf16Linear) == (".encoder." in name) for name, m in linears)
    assert {m.out for _, m in linears if isinstance(m, Bf16Linear)} == {torch.float32, torch.bfloat16}
    assert all(m.weight.dtype == torch.float32 for m in twin.modules() if isinstance(m, torch.nn.LayerNorm))
    top, _ = candidates(index, QUERIES[1], 20)
    texts = [index.resources[p].text for p in top]
    fp32 = cross_scores(model.cross, QUERIES[1], texts)
    bf16 = cross_scores(bf16_twin(model.cross), QUERIES[1], texts)
    assert bf16.dtype == np.float32 and np.abs(bf16 - fp32).max() < 0.05 * (np.abs(fp32).max() + 1e-3)
    assert not np.array_equal(bf16, fp32)  # it does compute in bf16


def test_pairs_built_from_kept_ids_are_the_tokenizers_own(
        served: tuple[CatalogueIndex, RankingModel], tmp_path: Path) -> None:
    """The same inputs, hence the same scores, as tokenizing every pair; a query too long for the
    kept ids falls back to the tokenizer."""
    index, model = served
    assert model.cross is not None
    tokens = PairTokens(model.cross.tokenizer, 64, entries=5)
    texts = [r.text for r in index.resources[:12]] + ["", "flutter " * 100]  # empty, and cut at 64
    pairs = [(q, t) for q in (*QUERIES, "wing " * 40) for t in texts]  # a query longer than half the room
    assert tokens.template is not None and tokens.matches(model.cross.preprocess, pairs)
    for query in QUERIES:  # the same inputs: the same scores but for float rounding in another call path
        # (the tiny model's logits are ~1e-3: float32 rounding alone moved one by 1.5e-6 of itself)
        np.testing.assert_allclose(cross_scores(model.cross, query, texts, tokens=tokens),
                                   cross_scores(model.cross, query, texts), rtol=1e-5, atol=1e-7)
    assert len(tokens) == 5  # the least recently used ids made room
    # An ONNX twin reads the same inputs (it has the torch model's tokenizer).
    folder = tmp_path / "cross"
    model.cross.save_pretrained(str(folder))
    onnx = load_onnx_cross_encoder(model.cross, folder, "onnx", tmp_path / "onnx")
    assert PairTokens(onnx.tokenizer, onnx.max_length).matches(onnx.preprocess, pairs)
    np.testing.assert_allclose(cross_scores(onnx, QUERIES[0], texts, tokens=tokens),
                               cross_scores(onnx, QUERIES[0], texts), rtol=1e-6)
    assert tokens.features("flutter " * 70, texts) is None  # 64 tokens or more: the tokenizer runs
    long = "flutter " * 70
    np.testing.assert_allclose(cross_scores(model.cross, long, texts, tokens=tokens),
                               cross_scores(model.cross, long, texts), rtol=1e-6)
