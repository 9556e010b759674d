"""Analysis per language: English exactly as before, French beating English on a French collection."""

from __future__ import annotations

import bm25s
import numpy as np
import Stemmer

from shared.ml.ranking.analysis import analyzer, language_code
from shared.ml.ranking.fields import CatalogueSchema
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.training.evaluate import ndcg_at
from shared.records import Resource
from tests import french
from tests.conftest import SAMPLE_CATALOGUE

SAMPLE = [Resource.model_validate_json(line) for line in SAMPLE_CATALOGUE.read_text().splitlines()
          if line.strip()]


def test_english_is_analysed_exactly_as_before() -> None:
    texts = [r.text for r in SAMPLE[:60]] + ["The running of the bulls, ran, runs", "Linear algebra's basics"]
    before = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                            show_progress=False)
    assert [analyzer("en").terms(text) for text in texts] == before
    assert analyzer("EN-gb") is analyzer("en")


def test_french_drops_elisions_stop_words_and_accents_and_stems() -> None:
    fr = analyzer("fr")
    assert fr.terms("l'algèbre") == fr.terms("algebre") == fr.terms("Algèbres")
    assert fr.terms("d'équations linéaires") == fr.terms("equation lineaire")
    assert fr.terms("les journaux") == fr.terms("un journal")
    assert fr.terms("jusqu'à la fin, qu'il est") == fr.terms("fin")
    assert language_code("fr-CA") == "fr" and analyzer("xx").terms("Les Chats") == ["les", "chats"]


def ndcg_of(index: CatalogueIndex, language: str | None) -> float:
    scores = []
    judged = french.judgments()
    for qid, (query, _) in french.QUERIES.items():
        top, _ = index.bm25_top(query, 10, language)
        ranked = [index.resources[p].id for p in top]
        scores.append(ndcg_at([judged[qid].get(r, 0) for r in ranked], list(judged[qid].values())))
    return float(np.mean(scores))


def test_french_analysis_beats_english_on_the_french_collection() -> None:
    as_french = CatalogueIndex(french.resources("fr"))
    as_english = CatalogueIndex(french.resources("en"))
    french_ndcg, english_ndcg = ndcg_of(as_french, None), ndcg_of(as_english, None)
    assert french_ndcg > english_ndcg + 0.1, (french_ndcg, english_ndcg)
    assert french_ndcg > 0.75
    # The catalogue's language applies where a resource names none.
    unnamed = CatalogueIndex(french.resources(""), schema=CatalogueSchema(language="fr"))
    assert unnamed.languages == ("fr",) and ndcg_of(unnamed, None) == french_ndcg


def test_a_mixed_catalogue_matches_each_resource_in_its_own_language() -> None:
    index = CatalogueIndex([*SAMPLE, *french.resources("fr")])
    assert index.languages == ("en", "fr") and index.analysed_in(None) == ("en", "fr")
    assert index.analysed_in("FR") == ("fr",)
    top, _ = index.bm25_top("theoreme de pythagore", 3)
    assert {index.resources[p].id for p in top} >= {"fr-geometrie-0"}
    top, _ = index.bm25_top("linear algebra for beginners", 5)
    assert index.resources[top[0]].language == "en"
    # Named, the language analyses the query for every resource: English stop words stay French terms.
    assert index.bm25_all("les journaux", "en")[index.position["fr-presse-0"]] == 0
    assert index.bm25_all("les journaux")[index.position["fr-presse-0"]] > 0
    # Candidates are scored the same way on their own tokens.
    positions = np.arange(len(index))
    on_candidates = index.query_bm25_at("les journaux", positions)
    assert np.allclose(on_candidates, index.bm25_all("les journaux"), atol=1e-5)
