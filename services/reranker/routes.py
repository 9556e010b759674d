"""Reranker HTTP API: search, rerank, model info, catalogue."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from services.reranker.inference_log import InferenceLog
from services.reranker.serving import ModelHolder
from shared import metrics
from shared.events import new_id
from shared.settings import Settings
from shared.store import Inference, Resource, ShownResult, Store

router = APIRouter()


def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    if not holder.ready:
        raise HTTPException(503, "the model is still loading, retry in a few seconds")
    return holder


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_inference_log(request: Request) -> InferenceLog:
    return request.app.state.inference_log


Holder = Annotated[ModelHolder, Depends(get_holder)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


class SearchRequest(BaseModel):
    query_text: str = Field(min_length=1, max_length=1000, examples=["machine learning tutorial"])
    use_reranker: bool = True
    top_k: int = Field(default=10, ge=1, le=100)
    candidates: int | None = Field(default=None, ge=1, le=200,
                                   description="First-stage candidates to rerank (default 50).")


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
    model_version: str
    use_reranker: bool
    latency_ms: float
    results: list[SearchResult]


@router.post("/api/reranking/search-with-reranking", response_model=SearchResponse, tags=["search"])
async def search(body: SearchRequest, holder: Holder, settings: SettingsDep,
                 inference_log: Annotated[InferenceLog, Depends(get_inference_log)]) -> SearchResponse:
    """First-stage BM25, then (with `use_reranker`) the served pipeline on the top candidates."""
    start = time.perf_counter()
    state = holder.state
    query = body.query_text.strip()
    if not query:
        raise HTTPException(422, "query_text must contain at least one non-space character")
    top_k = min(body.top_k, settings.max_top_k)
    n_candidates = min(body.candidates or settings.rerank_candidates, settings.max_candidates)
    positions, bm25 = state.index.bm25_top(query, max(n_candidates, top_k) if body.use_reranker else top_k)
    scores: dict[str, np.ndarray] = {"bm25": bm25}
    order = np.arange(positions.size)
    if body.use_reranker and positions.size:
        rerank_start = time.perf_counter()
        scores = await holder.run(state.model.score, state.index, query, positions, bm25)
        metrics.RERANK_DURATION.observe(time.perf_counter() - rerank_start)
        metrics.RERANK_CANDIDATES.observe(positions.size)
        order = np.argsort(-scores["fused"], kind="stable")
    order = order[:top_k]
    results = []
    for rank, i in enumerate(order, start=1):
        resource = state.index.resources[positions[i]]
        rerank = float(scores["fused"][i]) if "fused" in scores else None
        results.append(SearchResult(
            resource_id=resource.id, title=resource.title, description=resource.description,
            subject=resource.subject, level=resource.level, type=resource.type, url=resource.url,
            rank=rank, first_stage_score=float(bm25[i]), rerank_score=rerank,
            scores={k: float(v[i]) for k, v in scores.items()},
        ))
    version = state.model.version
    latency_ms = (time.perf_counter() - start) * 1000
    inference_id = new_id()
    inference_log.add(Inference(
        inference_id=inference_id, query=query, model_version=version, use_reranker=body.use_reranker,
        latency_ms=latency_ms,
        results=[ShownResult(resource_id=r.resource_id, rank=r.rank, first_stage_score=r.first_stage_score,
                             rerank_score=r.rerank_score, scores=r.scores) for r in results],
    ))
    holder.count_served(version)
    return SearchResponse(inference_id=inference_id, query_text=query, model_version=version,
                          use_reranker=body.use_reranker, latency_ms=round(latency_ms, 3),
                          results=results)


class RerankDocument(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=10000)


class RerankRequest(BaseModel):
    query: str = Field(min_length=1, max_length=1000)
    documents: list[RerankDocument] = Field(min_length=1, max_length=200)


class RerankScore(BaseModel):
    id: str
    rank: int
    score: float


class RerankResponse(BaseModel):
    model_version: str
    results: list[RerankScore]


@router.post("/api/reranking/rerank", response_model=RerankResponse, tags=["search"])
async def rerank(body: RerankRequest, holder: Holder) -> RerankResponse:
    """Scores caller-supplied documents with the served pipeline (BM25 computed over them)."""
    from shared.ml.retrieval import CatalogueIndex

    model = holder.state.model
    docs = [Resource(id=d.id, title=d.text[:500], description=d.text) for d in body.documents]

    def score() -> np.ndarray:
        index = CatalogueIndex(docs, model.embed_texts([d.text for d in docs]) if model.embedder else None)
        return model.score(index, body.query, np.arange(len(docs)))["fused"]

    fused = await holder.run(score)
    order = np.argsort(-fused, kind="stable")
    return RerankResponse(model_version=model.version, results=[
        RerankScore(id=body.documents[i].id, rank=r, score=float(fused[i]))
        for r, i in enumerate(order, start=1)
    ])


@router.get("/api/reranking/info-modele", tags=["model"])
async def info_modele(holder: Holder) -> dict:
    """The served model: version, scorers and weights, path, device, metrics, traffic."""
    return holder.info()


class ResourceBatch(BaseModel):
    resources: list[Resource] = Field(min_length=1, max_length=1000)


@router.post("/api/resources", tags=["catalogue"])
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
