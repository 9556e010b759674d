"""Pure parts of the reranker's serving: backend choice, ranking agreement, the query as read."""

from __future__ import annotations

import numpy as np

from services.reranker.routes.search import MAX_QUERY_CHARS, query_as_read
from shared.ml.ranking.backends import calibration_sets, same_top_k
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.choice import pick_backend
from shared.records import Resource


def test_same_top_k_accepts_identical_and_near_tied_swaps_only() -> None:
    reference = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    assert same_top_k(reference, reference.copy(), k=3)
    assert same_top_k(reference, reference + 0.5, k=3)  # a shift keeps the order
    near = np.array([5.0, 4.0, 2.995, 3.0, 1.0, 0.0])  # positions 3 and 4 tied within 0.01
    reference_near = np.array([5.0, 4.0, 3.0, 2.995, 1.0, 0.0])
    assert same_top_k(reference_near, near, k=4)
    swapped = np.array([4.0, 5.0, 3.0, 2.0, 1.0, 0.0])  # first two swapped, 1.0 apart
    assert not same_top_k(reference, swapped, k=3)
    intruder = np.array([5.0, 4.0, 0.0, 2.0, 1.0, 3.5])  # another item enters the top 3
    assert not same_top_k(reference, intruder, k=3)
    assert same_top_k(reference, intruder, k=2)


def test_pick_backend_takes_the_fastest_that_keeps_the_order() -> None:
    speeds = {"torch": 100.0, "onnx": 150.0, "onnx-int8": 300.0}
    assert pick_backend(speeds, {"torch": True, "onnx": True, "onnx-int8": True})[0] == "onnx-int8"
    assert pick_backend(speeds, {"torch": True, "onnx": True, "onnx-int8": False})[0] == "onnx"
    backend, reason = pick_backend(speeds, {"torch": True, "onnx": False, "onnx-int8": False})
    assert backend == "torch" and "top-10" in reason


def test_pick_backend_keeps_torch_unless_clearly_faster() -> None:
    backend, reason = pick_backend({"torch": 100.0, "onnx": 105.0}, {"torch": True, "onnx": True})
    assert backend == "torch" and "faster" in reason
    assert pick_backend({"torch": 100.0, "onnx": 111.0}, {"torch": True, "onnx": True})[0] == "onnx"
    assert pick_backend({"torch": 100.0}, {"torch": True})[0] == "torch"


def test_pick_backend_breaks_a_near_tie_towards_fp32() -> None:
    """Within 25 % of the fastest, timing noise decides: the choice must not flip between starts."""
    for int8, bf16 in ((119.8, 121.5), (121.4, 112.0), (146.1, 125.0), (127.2, 105.6)):  # starts on one VM
        backend, reason = pick_backend({"torch": 60.0, "onnx": 61.0, "torch-bf16": bf16, "onnx-int8": int8})
        assert backend == "torch-bf16" and ("closer to fp32" in reason) == (int8 > bf16)
    assert pick_backend({"torch": 60.0, "torch-bf16": 100.0, "onnx-int8": 140.0})[0] == "onnx-int8"
    # A runtime in the tie must still be clearly faster than torch itself.
    assert pick_backend({"torch": 100.0, "onnx": 104.0, "onnx-int8": 112.0})[0] == "onnx-int8"


def test_calibration_sets_use_catalogue_titles_and_their_bm25_candidates() -> None:
    resources = [Resource(id=f"r{i}", title=f"topic{i % 5} lesson {i}", description=f"about topic{i % 5}")
                 for i in range(30)]
    sets = calibration_sets(CatalogueIndex(resources), queries=3, candidates=4)
    assert [query for query, _, _ in sets] == [resources[0].title, resources[10].title, resources[20].title]
    for _, top, bm25 in sets:
        assert 2 <= top.size <= 4
        assert np.all(np.diff(bm25) <= 0)
    assert calibration_sets(CatalogueIndex([])) == []


def test_a_long_query_is_cut_at_a_word_break_within_the_limit() -> None:
    assert query_as_read("  machine learning  ") == "machine learning"
    short = "word " * (MAX_QUERY_CHARS // 5)
    assert query_as_read(short) == short.strip()
    long = "eigenvalues\nof matrices\t" * 500
    read = query_as_read(long)
    assert len(read) <= MAX_QUERY_CHARS and len(read) > MAX_QUERY_CHARS - 20
    assert read.split() == long.split()[:len(read.split())]  # whole words, in order
    assert query_as_read("x" * 5000) == "x" * MAX_QUERY_CHARS  # no break to cut at
    assert query_as_read("   ") == ""  # the route refuses it with a message
