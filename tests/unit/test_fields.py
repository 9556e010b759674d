"""Narrowing a search on the index: filters, facet counts, the order pages share, withdrawn resources."""

from __future__ import annotations

from collections import Counter

import numpy as np

from services.reranker.indexes import since_snapshot, withdrawn_since_snapshot
from shared.ml.ranking.fields import CatalogueSchema, top_positive
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.records import Resource
from tests.conftest import SAMPLE_CATALOGUE

SAMPLE = [Resource.model_validate_json(line) for line in SAMPLE_CATALOGUE.read_text().splitlines()
          if line.strip()]
QUERY = "learning"


def matching(index: CatalogueIndex) -> list[Resource]:
    return [r for r, score in zip(index.resources, index.bm25_all(QUERY), strict=True) if score > 0]


def test_values_of_a_field_are_or_fields_are_and_and_facets_count_the_whole_match() -> None:
    index = CatalogueIndex(SAMPLE)
    found = matching(index)
    levels, types = ("beginner", "advanced"), ("exercise", "video")
    match = index.match(QUERY, {"level": list(levels), "type": list(types)})
    expected = [r for r in found if r.level in levels and r.type in types]
    assert 3 < match.total == len(expected) < len(found)
    positions, scores = match.top(len(SAMPLE))
    assert {index.resources[p].id for p in positions} == {r.id for r in expected}
    assert np.all(scores > 0)

    facets = match.facets(["level", "type", "subject"])
    # A field's counts leave its own filter out (ticking another value adds that many), not the others'.
    assert facets["level"] == Counter(r.level for r in found if r.type in types)
    assert facets["type"] == Counter(r.type for r in found if r.level in levels)
    assert facets["subject"] == Counter(r.subject for r in expected)
    assert list(facets["subject"].values()) == sorted(facets["subject"].values(), reverse=True)
    assert sum(facets["level"][level] for level in levels) == match.total

    unfiltered = index.match(QUERY)
    assert unfiltered.total == len(found) and unfiltered.facets(["level"])["level"] == Counter(
        r.level for r in found)
    nobody = index.match(QUERY, {"level": ["expert"]})
    assert nobody.total == 0 and nobody.top(10)[0].size == 0
    assert nobody.facets(["level"])["level"] == unfiltered.facets(["level"])["level"]


def test_a_declared_field_of_the_catalogues_own_is_filtered_and_counted() -> None:
    graded = [r.model_copy(update={"fields": {"grade": str(n % 3)}}) for n, r in enumerate(SAMPLE)]
    index = CatalogueIndex(graded, schema=CatalogueSchema(filter_fields=("grade", "level")))
    match = index.match(QUERY, {"grade": ["1"]})
    assert match.total == sum(1 for r in matching(index) if r.fields["grade"] == "1")
    assert set(match.facets(["grade"])["grade"]) == {"0", "1", "2"}


def test_the_best_k_are_the_same_whatever_k_ties_by_position() -> None:
    scores = np.array([1, 3, 3, 0, 2, 3, 2, 0, 1, 3], dtype=np.float32)
    full, _ = top_positive(scores, 100)
    assert full.tolist() == [1, 2, 5, 9, 4, 6, 0, 8]
    for k in range(1, 9):
        assert top_positive(scores, k)[0].tolist() == full[:k].tolist()
    assert top_positive(np.zeros(4, dtype=np.float32), 3)[0].size == 0


def test_a_withdrawn_resource_is_never_matched_and_can_come_back() -> None:
    index = CatalogueIndex(SAMPLE)
    top, _ = index.bm25_top(QUERY, 3)
    gone = index.resources[top[0]]
    without = index.without([gone.id, "not-served"])
    assert gone.id not in without.position and gone.id in index.position  # the older snapshot is intact
    assert without.live_count == index.live_count - 1
    assert without.bm25_all(QUERY)[top[0]] == 0
    assert gone.id not in {without.resources[p].id for p in without.match(QUERY).top(len(SAMPLE))[0]}
    assert without.match(QUERY).total == index.match(QUERY).total - 1
    back = without.with_changes([gone])
    assert back.resources[back.position[gone.id]] == gone and back.live_count == index.live_count
    assert gone.id in {back.resources[p].id for p in back.bm25_top(QUERY, 3)[0]}


def test_a_rebuild_keeps_the_changes_and_the_withdrawals_made_while_it_ran() -> None:
    snapshot = CatalogueIndex(SAMPLE[:100])
    changed = SAMPLE[0].model_copy(update={"title": "Quaternions for game developers"})
    added, later_gone = SAMPLE[100], SAMPLE[101]
    now = snapshot.with_changes([changed, added, later_gone]).without([SAMPLE[1].id, later_gone.id])
    rebuilt = CatalogueIndex(snapshot.live_resources())
    merged = rebuilt.with_changes(since_snapshot(snapshot, now))
    merged = merged.without(withdrawn_since_snapshot(snapshot, now))
    assert sorted(map(str, merged.live_resources())) == sorted(map(str, now.live_resources()))
    assert merged.resources[merged.position[changed.id]].title == changed.title
    assert SAMPLE[1].id not in merged.position and later_gone.id not in merged.position
