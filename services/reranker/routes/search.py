"""Search over the catalogue (filters, facets, pages, languages), rerank of documents a caller
brings, and the served model's info."""

from __future__ import annotations

import functools
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from services.reranker.deps import HolderDep, InferenceLogDep
from services.reranker.ranking import rank
from shared.ml.ranking.analysis import LANGUAGES, language_code
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.records import Identifier, Inference, Resource, ShownResult, new_id
from shared.settings import Settings
from shared.web.auth import require_search
from shared.web.deps import SettingsDep
from shared.web.http import RequestBody

router = APIRouter()

MAX_RERANK_DOCUMENTS = 200
MAX_DOCUMENT_CHARS = 10_000
MAX_QUERY_CHARS = 2_000
"""What the rankers read of a query. A longer one (a pasted paragraph, a long test-collection
query) is accepted up to the body limit and cut here: the cross-encoder and the embedder read
`max_length` (128) tokens, about 500 characters, of it anyway, and BM25 over more than a
paragraph finds nothing better. The answer's `query_text` is the query as read."""


def query_as_read(text: str) -> str:
    """The query without surrounding spaces, cut to `MAX_QUERY_CHARS` at a word break."""
    query = text.strip()
    if len(query) <= MAX_QUERY_CHARS:
        return query
    words = query[:MAX_QUERY_CHARS + 1].split()
    return " ".join(words[:-1]) if len(words) > 1 else query[:MAX_QUERY_CHARS]


MAX_OFFSET = 10_000
"""The deepest a page may start: past it, people refine the query or its filters instead."""
FilterValue = Annotated[str, Field(min_length=1, max_length=200)]


class SearchRequest(RequestBody):
    query_text: str = Field(min_length=1, examples=["machine learning tutorial"], description=(
        f"Any length up to the body limit; the rankers read the first {MAX_QUERY_CHARS} characters "
        "(cut at a word break), and the answer's `query_text` is what they read."))
    use_reranker: bool = True
    top_k: int = Field(default=10, ge=1, le=100)
    candidates: int | None = Field(default=None, ge=1, le=200,
                                   description="First-stage candidates to rerank (default 50, at most 200).")
    user_id: Identifier | None = Field(default=None, description=(
        "Who searches, when the client knows: one person's searches count as one voice in what the "
        "model learns (give the same id with the feedback and interactions on its results)."))
    session_id: Identifier | None = Field(
        default=None, description="The browser or app session, where there is no user id.")
    is_test: bool = Field(default=False, description=(
        "A search no person made (a probe, a benchmark's measure): logged, but not evidence of where "
        "people look or what they pass over."))
    filters: dict[str, Annotated[list[FilterValue], Field(min_length=1, max_length=100)]] = Field(
        default_factory=dict, examples=[{"level": ["beginner"], "type": ["exercise", "video"]}], description=(
            "Field -> values: only resources with one of the values (OR) of every field named (AND). "
            "The fields are EDURANKER_FILTER_FIELDS (subject, level, type, language by default)."))
    facets: list[str] = Field(default_factory=list, max_length=20, examples=[["level", "subject"]],
                              description="Filterable fields to count the match's values of.")
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET, description=(
        "Results before this page: the next page is `offset + top_k`, with the same `top_k`, "
        "`candidates` and `ranking_id`."))
    language: str | None = Field(default=None, max_length=35, examples=["fr"], description=(
        "The query's language: its stemmer and stop words. Absent: each resource is matched with the "
        "query analysed in the resource's own language."))
    ranking_id: Identifier | None = Field(default=None, description=(
        "The first page's `ranking_id`: a later page continues that very ranking (in an experiment, "
        "the same interleaved list)."))


class SearchResult(BaseModel):
    resource_id: str
    title: str
    description: str
    subject: str
    level: str
    type: str
    language: str
    url: str | None
    fields: dict[str, str]
    rank: int = Field(description="Its rank in the whole ranking: `offset` + its place on this page.")
    first_stage_score: float
    rerank_score: float | None = Field(description="The served pipeline's fused score; null with "
                                       "`use_reranker=false` and past the reranked candidates.")
    scores: dict[str, float]


class SearchResponse(BaseModel):
    inference_id: str
    ranking_id: str = Field(description="Send it with a later page's request to continue this ranking.")
    query_text: str
    query_truncated: bool = Field(default=False, description=(
        f"True when the query was longer than the {MAX_QUERY_CHARS:,} characters the rankers read: "
        "`query_text` is the part they read."))
    query_languages: list[str] = Field(description="The languages the query was analysed in.")
    model_version: str
    use_reranker: bool
    candidates: int = Field(description="First-stage results the served pipeline scored (0: BM25 only).")
    offset: int
    total: int = Field(description="Resources that match the query and every filter (all pages).")
    facets: dict[str, dict[str, int]] = Field(description=(
        "For each field asked: its values' counts over the whole match, most frequent first, with every "
        "filter applied but the field's own (ticking another value adds that many)."))
    latency_ms: float
    results: list[SearchResult]


def checked_fields(body: SearchRequest, settings: Settings) -> None:
    """422 naming the first field a search filters or counts that the catalogue does not declare."""
    allowed = tuple(settings.filter_fields)
    for where, names in (("filters", list(body.filters)), ("facets", body.facets)):
        for name in names:
            if name not in allowed:
                raise HTTPException(422, f"{where}: {name!r} is not a filterable field; the filterable "
                                         f"ones are {', '.join(allowed)} (EDURANKER_FILTER_FIELDS)")
    if body.language is not None and language_code(body.language) not in LANGUAGES:
        raise HTTPException(422, f"language {body.language!r} is not one EduRanker analyses: "
                                 f"{', '.join(LANGUAGES)}; leave it out to match each resource in its own")


@router.post("/api/reranking/search-with-reranking", response_model=SearchResponse, tags=["search"],
             dependencies=[Depends(require_search)])
async def search(body: SearchRequest, holder: HolderDep, settings: SettingsDep,
                 inference_log: InferenceLogDep) -> SearchResponse:
    """First-stage BM25 over the resources that pass the filters, then (with `use_reranker`) the
    served pipeline on the top candidates; the page from `offset`, and facet counts."""
    start = time.perf_counter()
    inference_log.check_room()
    checked_fields(body, settings)
    state = holder.state
    query = query_as_read(body.query_text)
    if not query:
        raise HTTPException(422, "query_text must contain at least one non-space character")
    top_k = min(body.top_k, settings.max_top_k)
    n_candidates = min(body.candidates or settings.rerank_candidates, settings.max_candidates)
    inference_id = new_id()
    ranking_id = body.ranking_id or inference_id  # first: it decides whether this search is interleaved
    filters = {name: list(dict.fromkeys(values)) for name, values in body.filters.items()}
    language = language_code(body.language) if body.language else None
    ranking = functools.partial(rank, state, query, body.use_reranker, n_candidates, top_k, ranking_id,
                                offset=body.offset, filters=filters, facets=body.facets, language=language,
                                explore_share=settings.explore_share)
    # BM25, dense and cross scoring together on the model thread
    ranked = await holder.run(ranking) if body.use_reranker else ranking()
    results, teams, shares = [], ranked.teams, ranked.shares
    for shown, i in enumerate(ranked.order):
        position = int(ranked.positions[i])
        resource = state.index.resources[position]
        results.append(SearchResult(
            resource_id=resource.id, title=resource.title, description=resource.description,
            subject=resource.subject, level=resource.level, type=resource.type,
            language=state.index.schema.value(resource, "language"), url=resource.url, fields=resource.fields,
            rank=body.offset + shown + 1, first_stage_score=float(ranked.scores["bm25"][i]),
            rerank_score=ranked.rerank_score(shown),
            # A scorer a resource has no score from (no vector yet, past the candidates) is left out.
            scores={k: float(v[i]) for k, v in ranked.scores.items() if not np.isnan(v[i])},
        ))
    version = state.model.version
    latency_ms = (time.perf_counter() - start) * 1000
    inference_log.add(Inference(
        inference_id=inference_id, query=query, model_version=version, use_reranker=body.use_reranker,
        latency_ms=latency_ms, interleaving=ranked.interleaving, explored=ranked.explored,
        user_id=body.user_id, session_id=body.session_id, is_test=body.is_test, filters=filters,
        offset=body.offset,
        language=language, ranking_id=ranking_id,
        results=[ShownResult(resource_id=r.resource_id, rank=r.rank, first_stage_score=r.first_stage_score,
                             rerank_score=r.rerank_score, scores=r.scores,
                             team=teams[n] if teams else None, share=shares[n] if shares else None)
                 for n, r in enumerate(results)],
    ))
    holder.count_served(version)
    return SearchResponse(inference_id=inference_id, ranking_id=ranking_id, query_text=query,
                          query_truncated=len(query) < len(body.query_text.strip()),
                          query_languages=list(state.index.analysed_in(language)),
                          model_version=version, use_reranker=body.use_reranker, candidates=ranked.reranked,
                          offset=body.offset, total=ranked.total, facets=ranked.facets,
                          latency_ms=round(latency_ms, 3), results=results)


class RerankDocument(RequestBody):
    id: Identifier
    text: str = Field(min_length=1, max_length=MAX_DOCUMENT_CHARS,
                      description=f"At most {MAX_DOCUMENT_CHARS} characters; longer texts are refused.")


class RerankRequest(RequestBody):
    query: str = Field(min_length=1, description=(
        f"Any length up to the body limit; the rankers read the first {MAX_QUERY_CHARS} characters."))
    documents: list[RerankDocument] = Field(
        min_length=1, max_length=MAX_RERANK_DOCUMENTS,
        description=f"1 to {MAX_RERANK_DOCUMENTS} documents with unique ids; send more in several calls.")


class RerankScore(BaseModel):
    id: str
    rank: int
    score: float
    scores: dict[str, float]


class RerankResponse(BaseModel):
    model_version: str
    latency_ms: float
    results: list[RerankScore]


@router.post("/api/reranking/rerank", response_model=RerankResponse, tags=["search"],
             dependencies=[Depends(require_search)])
async def rerank(body: RerankRequest, holder: HolderDep) -> RerankResponse:
    """Scores caller-supplied documents with the served pipeline (BM25 computed over them).

    Not logged as an inference: the documents are not in the catalogue, so feedback on
    them could not become training pairs.
    """
    start = time.perf_counter()
    query = query_as_read(body.query)
    if not query:
        raise HTTPException(422, "query must contain at least one non-space character")
    ids = [d.id for d in body.documents]
    if len(set(ids)) != len(ids):
        raise HTTPException(422, "document ids must be unique within one request")
    model = holder.state.model
    # The text is used as given: no title/description split to validate.
    docs = [Resource.model_construct(id=d.id, title=d.text, description="") for d in body.documents]

    def score() -> dict[str, np.ndarray]:
        vectors = model.embed_texts([d.text for d in docs]) if model.embedder else None
        index = CatalogueIndex(docs, vectors, schema=holder.state.index.schema)
        return model.score(index, query, np.arange(len(docs)))

    scores = await holder.run(score)
    order = np.argsort(-scores["fused"], kind="stable")
    return RerankResponse(
        model_version=model.version, latency_ms=round((time.perf_counter() - start) * 1000, 3),
        results=[RerankScore(id=ids[i], rank=r, score=float(scores["fused"][i]),
                             scores={k: float(v[i]) for k, v in scores.items() if k != "fused"})
                 for r, i in enumerate(order, start=1)])


@router.get("/api/reranking/info-modele", tags=["model"])
async def info_modele(holder: HolderDep) -> dict:
    """The served model: version, scorers and weights, path, device, metrics, traffic."""
    return holder.info()
