"""The served model is a versioned pipeline: scorers, their model folders, and fusion weights.

Version 0 fuses BM25 with dense scores from the base embedding model. Trained versions
add a cross-encoder fine-tuned on feedback; the fusion weights say how much each counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from sentence_transformers import CrossEncoder, SentenceTransformer

from shared.events import utcnow
from shared.ml.model import cross_scores, embed, load_cross_encoder, load_embedder
from shared.ml.retrieval import CatalogueIndex
from shared.settings import Settings

SPEC_FILE = "pipeline.json"
SCORERS = ("bm25", "dense", "cross")


class PipelineSpec(BaseModel):
    version: str = "v0"
    base_model: str
    embedding_model: str | None = None
    cross_encoder: str | None = Field(
        default=None, description="Cross-encoder folder relative to the version folder."
    )
    weights: dict[str, float] = Field(default_factory=lambda: {"bm25": 1.0, "dense": 1.0})
    max_length: int = 128
    metrics: dict[str, float] = Field(default_factory=dict)
    trained_at: datetime | None = None

    @property
    def kind(self) -> str:
        return "+".join(s for s in SCORERS if self.weights.get(s))

    def save(self, folder: Path) -> None:
        (folder / SPEC_FILE).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, folder: Path) -> PipelineSpec:
        return cls.model_validate(json.loads((folder / SPEC_FILE).read_text()))


def zscore(values: np.ndarray) -> np.ndarray:
    """Per-query normalisation so scorers on different scales can be added."""
    if values.size == 0:
        return values
    std = float(values.std())
    return (values - values.mean()) / std if std > 1e-9 else np.zeros_like(values)


def fuse(scores: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    parts = [w * zscore(scores[name]) for name, w in weights.items() if w and name in scores]
    if not parts:
        raise ValueError("no scorer with a non-zero weight")
    return np.sum(parts, axis=0)


@dataclass
class RankingModel:
    """A loaded pipeline: what the reranker serves and what the trainer evaluates."""

    spec: PipelineSpec
    folder: Path | None = None
    embedder: SentenceTransformer | None = None
    cross: CrossEncoder | None = None
    loaded_at: datetime = field(default_factory=utcnow)

    @classmethod
    def load(cls, spec: PipelineSpec, folder: Path | None, device: str = "auto",
             embedder: SentenceTransformer | None = None) -> RankingModel:
        """Loads every model the spec names; an embedder already loaded for the same id is reused."""
        if spec.weights.get("dense") and embedder is None:
            embedder = load_embedder(spec.embedding_model or spec.base_model, spec.max_length, device)
        cross = None
        if spec.weights.get("cross"):
            if folder is None or spec.cross_encoder is None:
                raise ValueError("a pipeline with a cross-encoder needs its folder")
            cross = load_cross_encoder(str(folder / spec.cross_encoder), spec.max_length, device,
                                       fallback=False)
        return cls(spec=spec, folder=folder, embedder=embedder if spec.weights.get("dense") else None,
                   cross=cross)

    @property
    def version(self) -> str:
        return self.spec.version

    def embed_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if self.embedder is None:
            raise ValueError("this pipeline has no dense scorer")
        return embed(self.embedder, texts, progress=progress)

    def score(self, index: CatalogueIndex, query: str, positions: np.ndarray,
              bm25: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every scorer's raw score for the candidates at `positions`, plus `fused`."""
        positions = np.asarray(positions, dtype=np.int64)
        scores: dict[str, np.ndarray] = {
            "bm25": bm25 if bm25 is not None else index.bm25_all(query)[positions]
        }
        if self.embedder is not None and index.embeddings is not None:
            scores["dense"] = index.dense(self.embed_texts([query])[0], positions)
        if self.cross is not None:
            texts = [index.resources[p].text for p in positions]
            scores["cross"] = cross_scores(self.cross, query, texts)
        scores["fused"] = fuse(scores, self.spec.weights)
        return scores

    def warm_up(self, index: CatalogueIndex) -> None:
        """One real pass, so the first user request does not pay for lazy initialisation."""
        if len(index):
            top, bm25 = index.bm25_top(index.resources[0].title, 5)
            if top.size:
                self.score(index, index.resources[0].title, top, bm25)


def version_zero(settings: Settings) -> PipelineSpec:
    """BM25 fused with the base embedding model's dense scores: better than BM25 before any feedback."""
    return PipelineSpec(version="v0", base_model=settings.base_model,
                        embedding_model=settings.embedding_model,
                        weights={"bm25": 1.0, "dense": 1.0}, max_length=settings.max_length)


def load_champion(settings: Settings, registry_champion: str | None, folder: Path | None,
                  embedder: SentenceTransformer | None = None) -> RankingModel:
    """The registry's champion, or version 0 when nothing has been promoted yet."""
    if registry_champion and folder is not None:
        return RankingModel.load(PipelineSpec.load(folder), folder, settings.device, embedder=embedder)
    return RankingModel.load(version_zero(settings), None, settings.device, embedder=embedder)
