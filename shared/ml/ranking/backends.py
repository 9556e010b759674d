"""Which runtime scores a version's cross-encoder: torch fp32, or a twin (torch in bf16 where the CPU
multiplies bf16 natively, ONNX Runtime fp32 or int8) where it is faster with the same top-10 order
(timed and checked on a few catalogue queries every time a version loads)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.ml.ranking.pipeline import RankingModel
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.choice import pick_backend
from shared.ml.runtime.device import cpu_has_fast_bf16, pick_device
from shared.ml.runtime.loading import bf16_twin, cross_scores
from shared.ml.runtime.onnx import load_onnx_cross_encoder
from shared.settings import Settings

log = logging.getLogger(__name__)

ORDER_TOP_K = 10
ORDER_TOLERANCE = 0.01
"""Fused-score (z-units) gap under which two results count as tied when comparing backends."""
CALIBRATION_QUERIES = 3
CALIBRATION_CANDIDATES = 20
CalibrationSet = tuple[str, np.ndarray, np.ndarray]
"""A query, its BM25 top positions and their BM25 scores."""


def same_top_k(reference: np.ndarray, candidate: np.ndarray, k: int = ORDER_TOP_K,
               tolerance: float = ORDER_TOLERANCE) -> bool:
    """Whether `candidate` ranks the top k like `reference`, position by position.

    Items the reference scores within `tolerance` of each other may swap: at each position
    the candidate's pick must score (by the reference) within `tolerance` of the reference's.
    """
    ref_top = np.argsort(-reference, kind="stable")[:k]
    cand_top = np.argsort(-candidate, kind="stable")[:k]
    return bool(np.all(np.abs(reference[cand_top] - reference[ref_top]) <= tolerance))


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str
    pairs_per_s: dict[str, float] = field(default_factory=dict)
    agrees: dict[str, bool] = field(default_factory=dict)


def onnx_cache(settings: Settings) -> Path:
    return settings.onnx_cache_dir or settings.registry_root / ".cache" / "onnx"


def choose_backend(model: RankingModel, index: CatalogueIndex, settings: Settings,
                   sets: list[CalibrationSet]) -> tuple[RankingModel, BackendChoice]:
    """Torch, an ONNX Runtime twin, or (`auto`) whichever is faster with the same top-10 on the
    calibration queries `sets` (`calibration_sets(index)`)."""
    wanted = settings.backend
    if model.cross is None:
        return model, BackendChoice("torch", "no cross-encoder in this version")
    if pick_device(settings.device) == "cuda":
        model.cross.model.half()
        return model, BackendChoice("torch-fp16", "GPU: torch in fp16")
    if wanted == "torch" or model.folder is None or model.spec.cross_encoder is None:
        return model, BackendChoice("torch", f"EDURANKER_BACKEND={wanted}")
    if wanted == "auto" and not sets:
        return model, BackendChoice("torch", "empty catalogue: no queries to compare backends on")
    folder = model.folder / model.spec.cross_encoder
    variants = [wanted] if wanted != "auto" else ["onnx", "onnx-int8", *(["torch-bf16"] if cpu_has_fast_bf16()
                                                                         else [])]
    candidates = {"torch": model}
    for backend in variants:
        try:
            twin = (bf16_twin(model.cross) if backend == "torch-bf16" else
                    load_onnx_cross_encoder(model.cross, folder, backend, onnx_cache(settings),
                                            settings.torch_threads))
        except Exception as exc:  # an architecture the exporter cannot handle still serves with torch
            log.error("event=backend_unavailable backend=%s error=%r", backend, str(exc)[:300])
            continue
        candidates[backend] = dataclasses.replace(model, cross=twin)
    if wanted != "auto":
        chosen = candidates.get(wanted)
        if chosen is None:
            return model, BackendChoice("torch", f"{wanted} failed to load; see the error log")
        return chosen, BackendChoice(wanted, f"EDURANKER_BACKEND={wanted}")
    speeds, agrees = calibrate(candidates, index, sets)
    backend, reason = pick_backend(speeds, agrees)
    log.info("event=backend_chosen backend=%s reason=%r pairs_per_s=%s", backend, reason, speeds)
    return candidates[backend], BackendChoice(backend, reason, speeds, agrees)


def calibrate(candidates: dict[str, RankingModel], index: CatalogueIndex,
              sets: list[CalibrationSet]) -> tuple[dict[str, float], dict[str, bool]]:
    """Score a few catalogue queries with every backend: speed, and top-10 agreement with torch."""
    reference = [candidates["torch"].score(index, q, top, bm25)["fused"] for q, top, bm25 in sets]
    agrees = {"torch": True}
    for backend, model in candidates.items():
        if backend != "torch":
            fused = [model.score(index, q, top, bm25)["fused"] for q, top, bm25 in sets]
            agrees[backend] = all(same_top_k(r, f) for r, f in zip(reference, fused, strict=True))
    pairs = sum(top.size for _, top, _ in sets)
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(2):  # round-robin, best of two: load from other work hits every backend alike
        for backend, model in candidates.items():
            start = time.perf_counter()
            for query, top, _ in sets:
                cross_scores(model.cross, query, [index.resources[p].text for p in top])
            best[backend] = min(best[backend], time.perf_counter() - start)
    return {b: round(pairs / t, 1) for b, t in best.items()}, agrees


def calibration_sets(index: CatalogueIndex, queries: int = CALIBRATION_QUERIES,
                     candidates: int = CALIBRATION_CANDIDATES) -> list[CalibrationSet]:
    """A few catalogue titles as queries, each with its BM25 top candidates: deterministic, no extra data."""
    if not len(index):
        return []
    step = max(1, len(index) // queries)
    sets = []
    for position in range(0, len(index), step)[:queries]:
        query = index.resources[position].title
        top, bm25 = index.bm25_top(query, candidates)
        if top.size >= 2:
            sets.append((query, top, bm25))
    return sets
