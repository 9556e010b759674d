"""Text analysis per language: how a text becomes BM25 terms (stemming, stop words, elisions, accents).

A resource is analysed in its own language (its `language`, else the catalogue's); a query in the
language a search names, else once per language of the catalogue, each resource then matched with
the query's terms in its own language (services/reranker's search; shared/ml/ranking/retrieval.py).
English is analysed exactly as EduRanker always did (bm25s's tokenizer, its English stop words,
the Snowball English stemmer), so English rankings do not move. French also drops elisions
("l'algèbre" is "algèbre") and folds accents before stemming, so "geometrie" typed on a keyboard
without accents finds "géométrie". Other languages PyStemmer and bm25s both know are stemmed and
their stop words dropped; a language neither knows is only lowercased and split.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import bm25s
import bm25s.stopwords as bm25s_stopwords
import Stemmer
from bm25s.tokenization import Tokenized

ENGLISH = "en"

# The Snowball stemmer and bm25s's stop words of each language analysed with both.
_KNOWN = {
    "en": ("english", "en"),
    "fr": ("french", bm25s_stopwords.STOPWORDS_FRENCH),
    "de": ("german", bm25s_stopwords.STOPWORDS_GERMAN),
    "es": ("spanish", bm25s_stopwords.STOPWORDS_SPANISH),
    "it": ("italian", bm25s_stopwords.STOPWORDS_ITALIAN),
    "pt": ("portuguese", bm25s_stopwords.STOPWORDS_PORTUGUESE),
    "nl": ("dutch", bm25s_stopwords.STOPWORDS_DUTCH),
}
LANGUAGES = tuple(_KNOWN)
"""The languages analysed with their own stemmer and stop words."""

_FRENCH_ELISION = re.compile(r"\b(?:qu|jusqu|lorsqu|puisqu|quoiqu|[cdjlmnst])['’]", re.IGNORECASE)


def language_code(language: str) -> str:
    """"fr-CA", "FR" and "fr" are one language to the analysis."""
    return language.strip().lower().replace("_", "-").split("-")[0]


def fold_accents(word: str) -> str:
    """"géométrie" -> "geometrie": what a keyboard without accents types."""
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


@dataclass(frozen=True)
class Analyzer:
    """How one language's texts become terms; `tokenize` is bm25s's, with this language's parts."""

    language: str
    stopwords: str | list[str]
    stemmer: Callable[[list[str]], list[str]] | None
    prepare: Callable[[str], str] | None = None

    def tokenize(self, texts: list[str], return_ids: bool = True) -> Tokenized | list[list[str]]:
        if self.prepare is not None:
            texts = [self.prepare(text) for text in texts]
        return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer, return_ids=return_ids,
                              show_progress=False)

    def terms(self, text: str) -> list[str]:
        """One text's terms, in order (a query's)."""
        terms = self.tokenize([text], return_ids=False)[0]
        assert isinstance(terms, list)
        return terms


def _french_elisions(text: str) -> str:
    return _FRENCH_ELISION.sub(" ", text)


def analyzer(language: str) -> Analyzer:
    """The analysis of `language` (any spelling `language_code` accepts)."""
    return _analyzer(language_code(language))


@cache
def _analyzer(code: str) -> Analyzer:
    if code not in _KNOWN:
        return Analyzer(code, [], None)
    algorithm, stopwords = _KNOWN[code]
    stemmer = Stemmer.Stemmer(algorithm)
    if code == ENGLISH:
        return Analyzer(code, stopwords, stemmer.stemWords)
    if code == "fr":
        # Stop words are dropped before folding (bm25s drops them first): their folded forms too,
        # for queries typed without accents ("a", "ete").
        words = sorted(set(stopwords) | {fold_accents(w) for w in stopwords})
        return Analyzer(code, words, lambda tokens: stemmer.stemWords([fold_accents(t) for t in tokens]),
                        _french_elisions)
    return Analyzer(code, list(stopwords), stemmer.stemWords)
