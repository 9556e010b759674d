"""Reranker HTTP API: search, rerank, model info, catalogue."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from services.reranker.inference_log import InferenceLog
from services.reranker.ranking import rank
from services.reranker.serving import ModelHolder
from shared.auth import require_admin, require_search
from shared.deps import SettingsDep, StoreDep
from shared.events import new_id
from shared.ml.retrieval import CatalogueIndex
from shared.store import Inference, Resource, ShownResult

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


def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    if not holder.ready:
        raise HTTPException(503, "the model is still loading, retry in a few seconds")
    return holder


def get_inference_log(request: Request) -> InferenceLog:
    return request.app.state.inference_log


Holder = Annotated[ModelHolder, Depends(get_holder)]


class SearchRequest(BaseModel):
    query_text: str = Field(min_length=1, examples=["machine learning tutorial"], description=(
        f"Any length up to the body limit; the rankers read the first {MAX_QUERY_CHARS} characters "
        "(cut at a word break), and the answer's `query_text` is what they read."))
    use_reranker: bool = True
    top_k: int = Field(default=10, ge=1, le=100)
    candidates: int | None = Field(default=None, ge=1, le=200,
                                   description="First-stage candidates to rerank (default 50, at most 200).")


class SearchResult(BaseModel):
    resource_id: str
    title: str
    description: str
    subject: str
    level: str
    type: str
    url: str | None
    rank: int
    first_stage_score: float
    rerank_score: float | None
    scores: dict[str, float]


class SearchResponse(BaseModel):
    inference_id: str
    query_text: str
    query_truncated: bool = Field(default=False, description=(
        f"True when the query was longer than the {MAX_QUERY_CHARS:,} characters the rankers read: "
        "`query_text` is the part they read."))
    model_version: str
    use_reranker: bool
    candidates: int = Field(description="First-stage results the served pipeline scored (0: BM25 only).")
    latency_ms: float
    results: list[SearchResult]


@router.post("/api/reranking/search-with-reranking", response_model=SearchResponse, tags=["search"],
             dependencies=[Depends(require_search)])
async def search(body: SearchRequest, holder: Holder, settings: SettingsDep,
                 inference_log: Annotated[InferenceLog, Depends(get_inference_log)]) -> SearchResponse:
    """First-stage BM25, then (with `use_reranker`) the served pipeline on the top candidates."""
    start = time.perf_counter()
    inference_log.check_room()
    state = holder.state
    query = query_as_read(body.query_text)
    if not query:
        raise HTTPException(422, "query_text must contain at least one non-space character")
    top_k = min(body.top_k, settings.max_top_k)
    n_candidates = min(body.candidates or settings.rerank_candidates, settings.max_candidates)
    inference_id = new_id()  # first: it decides whether this search is interleaved
    if body.use_reranker:  # BM25, dense and cross scoring together on the model thread
        ranked = await holder.run(rank, state, query, True, n_candidates, top_k, inference_id)
    else:
        ranked = rank(state, query, False, n_candidates, top_k, inference_id)
    results, teams, shares = [], ranked.teams, ranked.shares
    for shown, i in enumerate(ranked.order):
        resource = state.index.resources[ranked.positions[i]]
        results.append(SearchResult(
            resource_id=resource.id, title=resource.title, description=resource.description,
            subject=resource.subject, level=resource.level, type=resource.type, url=resource.url,
            rank=shown + 1, first_stage_score=float(ranked.scores["bm25"][i]),
            rerank_score=ranked.rerank_score(shown),
            # A scorer a resource has no score from yet (no vector: the dense part) is left out.
            scores={k: float(v[i]) for k, v in ranked.scores.items() if not np.isnan(v[i])},
        ))
    version = state.model.version
    latency_ms = (time.perf_counter() - start) * 1000
    inference_log.add(Inference(
        inference_id=inference_id, query=query, model_version=version, use_reranker=body.use_reranker,
        latency_ms=latency_ms, interleaving=ranked.interleaving,
        results=[ShownResult(resource_id=r.resource_id, rank=r.rank, first_stage_score=r.first_stage_score,
                             rerank_score=r.rerank_score, scores=r.scores,
                             team=teams[n] if teams else None, share=shares[n] if shares else None)
                 for n, r in enumerate(results)],
    ))
    holder.count_served(version)
    return SearchResponse(inference_id=inference_id, query_text=query,
                          query_truncated=len(query) < len(body.query_text.strip()),
                          model_version=version, use_reranker=body.use_reranker,
                          candidates=int(ranked.positions.size) if body.use_reranker else 0,
                          latency_ms=round(latency_ms, 3), results=results)


class RerankDocument(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=MAX_DOCUMENT_CHARS,
                      description=f"At most {MAX_DOCUMENT_CHARS} characters; longer texts are refused.")


class RerankRequest(BaseModel):
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
async def rerank(body: RerankRequest, holder: Holder) -> RerankResponse:
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
        index = CatalogueIndex(docs, model.embed_texts([d.text for d in docs]) if model.embedder else None)
        return model.score(index, query, np.arange(len(docs)))

    scores = await holder.run(score)
    order = np.argsort(-scores["fused"], kind="stable")
    return RerankResponse(
        model_version=model.version, latency_ms=round((time.perf_counter() - start) * 1000, 3),
        results=[RerankScore(id=ids[i], rank=r, score=float(scores["fused"][i]),
                             scores={k: float(v[i]) for k, v in scores.items() if k != "fused"})
                 for r, i in enumerate(order, start=1)])


@router.get("/api/reranking/info-modele", tags=["model"])
async def info_modele(holder: Holder) -> dict:
    """The served model: version, scorers and weights, path, device, metrics, traffic."""
    return holder.info()


class ResourceBatch(BaseModel):
    resources: list[Resource] = Field(min_length=1, max_length=1000)


@router.post("/api/resources", tags=["catalogue"], dependencies=[Depends(require_admin)])
async def upsert_resources(body: ResourceBatch, request: Request, store: StoreDep) -> dict:
    """Adds or updates resources by id; the search index follows without a restart."""
    ids = [r.id for r in body.resources]
    if len(set(ids)) != len(ids):
        raise HTTPException(422, "resource ids must be unique within one batch")
    count = await store.upsert_resources(body.resources)
    await request.app.state.refresh_catalogue()
    return {"upserted": count}


@router.get("/api/resources/{resource_id}", response_model=Resource, tags=["catalogue"])
async def get_resource(resource_id: str, store: StoreDep) -> Resource:
    found = await store.get_resources([resource_id])
    if resource_id not in found:
        raise HTTPException(404, f"resource {resource_id!r} not found")
    return found[resource_id]
