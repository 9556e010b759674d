"""The model holder: what is served now, and how a new version or catalogue replaces it.

Scoring runs on one dedicated thread (`executor`); loading, warm-up, backend selection and
re-indexing run on another (`loader`), so a reload never queues requests behind it.
Requests read `holder.state` once, and a swap is one reference assignment, so a request
in flight finishes on the model it started with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared import metrics
from shared.ml.model import cross_backend, cross_scores, load_onnx_cross_encoder, pick_device
from shared.ml.pipeline import SPEC_FILE, PipelineSpec, RankingModel, version_zero
from shared.ml.registry import Registry
from shared.ml.retrieval import CatalogueIndex, EmbeddingCache
from shared.settings import Settings
from shared.store import Resource

log = logging.getLogger(__name__)

ORDER_TOP_K = 10
ORDER_TOLERANCE = 0.01
"""Fused-score (z-units) gap under which two results count as tied when comparing backends."""
MIN_SPEEDUP = 1.1
"""`auto` leaves torch only for a backend at least this much faster, so timing noise cannot flip it."""
CALIBRATION_QUERIES = 3
CALIBRATION_CANDIDATES = 20
CalibrationSet = tuple[str, np.ndarray, np.ndarray]
"""A query, its BM25 top positions and their BM25 scores."""


def pinned_spec(settings: Settings, folder: Path) -> PipelineSpec:
    """`CROSS_ENCODER_PATH`: a registry version folder as is, or a bare cross-encoder folder."""
    if (folder / SPEC_FILE).exists():
        return PipelineSpec.load(folder)
    return PipelineSpec(version=f"pinned:{folder.name}", base_model=str(folder), cross_encoder=".",
                        weights={"cross": 1.0}, max_length=settings.max_length)


def same_top_k(reference: np.ndarray, candidate: np.ndarray, k: int = ORDER_TOP_K,
               tolerance: float = ORDER_TOLERANCE) -> bool:
    """Whether `candidate` ranks the top k like `reference`, position by position.

    Items the reference scores within `tolerance` of each other may swap: at each position
    the candidate's pick must score (by the reference) within `tolerance` of the reference's.
    """
    ref_top = np.argsort(-reference, kind="stable")[:k]
    cand_top = np.argsort(-candidate, kind="stable")[:k]
    return bool(np.all(np.abs(reference[cand_top] - reference[ref_top]) <= tolerance))


def pick_backend(pairs_per_s: dict[str, float], agrees: dict[str, bool],
                 min_speedup: float = MIN_SPEEDUP) -> tuple[str, str]:
    """`auto`: the fastest backend that keeps torch's top-10 order and beats torch by `min_speedup`."""
    torch_speed = pairs_per_s.get("torch", 0.0)
    eligible = {b: s for b, s in pairs_per_s.items() if b != "torch" and agrees.get(b)}
    if not eligible:
        return "torch", "no other backend kept the top-10 order"
    best = max(eligible, key=lambda b: eligible[b])
    if eligible[best] < torch_speed * min_speedup:
        return "torch", f"{best} was not {min_speedup}x faster than torch"
    return best, f"{best}: {eligible[best] / max(torch_speed, 1e-9):.2f}x torch, same top-10 order"


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str
    pairs_per_s: dict[str, float] = field(default_factory=dict)
    agrees: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingState:
    model: RankingModel
    index: CatalogueIndex
    backend: BackendChoice


class VersionRejected(ValueError):
    """A registry version that must not be served, whatever its files contain."""


class ModelHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.model_dir)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._state: ServingState | None = None
        self._caches: dict[str, EmbeddingCache] = {}
        self._reload_lock = asyncio.Lock()
        self.served: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        """Versions that failed to load, with the error; the watcher does not retry them."""
        self.pinned = settings.cross_encoder_path is not None

    @property
    def state(self) -> ServingState:
        if self._state is None:
            raise RuntimeError("no model loaded yet")
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is not None

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run CPU-heavy request work on the model thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _load(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.loader, fn, *args)

    def close(self) -> None:
        self.loader.shutdown(wait=True, cancel_futures=True)
        self.executor.shutdown(wait=True)

    # Loading (loader thread)
    def _build(self, spec: PipelineSpec, folder: Path | None, resources: list[Resource]) -> ServingState:
        current = self._state.model if self._state else None
        reuse = None
        if current is not None and current.spec.embedding_model == spec.embedding_model:
            reuse = current.embedder
        model = RankingModel.load(spec, folder, self.settings.device, embedder=reuse)
        index = self._index(model, resources)
        model.warm_up(index)
        model, backend = self._choose_backend(model, index)
        model.warm_up(index)
        return ServingState(model=model, index=index, backend=backend)

    def _index(self, model: RankingModel, resources: list[Resource]) -> CatalogueIndex:
        if model.embedder is None:
            return CatalogueIndex(resources)
        key = model.spec.embedding_model or model.spec.base_model
        cache = self._caches.setdefault(key, EmbeddingCache(model.embed_texts))
        return CatalogueIndex(resources, cache([r.text for r in resources]))

    def _onnx_cache(self) -> Path:
        return self.settings.onnx_cache_dir or self.settings.registry_root / ".cache" / "onnx"

    def _choose_backend(self, model: RankingModel,
                        index: CatalogueIndex) -> tuple[RankingModel, BackendChoice]:
        """Torch, an ONNX Runtime twin, or (`auto`) whichever is faster with the same top-10."""
        wanted = self.settings.backend
        if model.cross is None:
            return model, BackendChoice("torch", "no cross-encoder in this version")
        if pick_device(self.settings.device) == "cuda":
            model.cross.model.half()
            return model, BackendChoice("torch-fp16", "GPU: torch in fp16")
        if wanted == "torch" or model.folder is None or model.spec.cross_encoder is None:
            return model, BackendChoice("torch", f"EDURANKER_BACKEND={wanted}")
        sets = calibration_sets(index)
        if wanted == "auto" and not sets:
            return model, BackendChoice("torch", "empty catalogue: no queries to compare backends on")
        folder = model.folder / model.spec.cross_encoder
        variants = [wanted] if wanted != "auto" else ["onnx", "onnx-int8"]
        candidates = {"torch": model}
        for backend in variants:
            try:
                onnx = load_onnx_cross_encoder(model.cross, folder, backend, self._onnx_cache(),
                                               self.settings.torch_threads)
            except Exception as exc:  # an architecture the exporter cannot handle still serves with torch
                log.error("event=onnx_unavailable backend=%s error=%r", backend, str(exc)[:300])
                continue
            candidates[backend] = dataclasses.replace(model, cross=onnx)
        if wanted != "auto":
            chosen = candidates.get(wanted)
            if chosen is None:
                return model, BackendChoice("torch", f"{wanted} failed to load; see the error log")
            return chosen, BackendChoice(wanted, f"EDURANKER_BACKEND={wanted}")
        speeds, agrees = self._calibrate(candidates, index, sets)
        backend, reason = pick_backend(speeds, agrees)
        log.info("event=backend_chosen backend=%s reason=%r pairs_per_s=%s", backend, reason, speeds)
        return candidates[backend], BackendChoice(backend, reason, speeds, agrees)

    def _calibrate(self, candidates: dict[str, RankingModel], index: CatalogueIndex,
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

    def _publish_info(self) -> None:
        state = self.state
        spec = state.model.spec
        metrics.SERVED_MODEL.info({"version": spec.version, "base": spec.base_model, "kind": spec.kind,
                                   "backend": state.backend.backend})
        number = spec.version[1:] if spec.version.startswith("v") and spec.version[1:].isdigit() else "-1"
        metrics.SERVED_MODEL_VERSION.set(int(number))

    def _registry_version(self, location: str) -> tuple[PipelineSpec, Path]:
        folder = self.registry.resolve(location)
        spec = PipelineSpec.load(folder)
        if spec.version != folder.name:
            raise VersionRejected(f"folder {folder.name} holds the pipeline of version {spec.version!r}")
        return spec, folder

    def _failed(self, location: str, exc: BaseException) -> None:
        metrics.MODEL_RELOADS.labels("failed").inc()
        self.failed[location] = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.error("event=reload_failed location=%s error=%r", location, self.failed[location])

    async def load_initial(self, resources: list[Resource]) -> None:
        """`CROSS_ENCODER_PATH` (a failure stops start-up), else the champion, else version 0."""
        if self.settings.cross_encoder_path is not None:
            folder = Path(self.settings.cross_encoder_path).resolve()
            self._state = await self._load(self._build, pinned_spec(self.settings, folder), folder, resources)
        else:
            champion = self.registry.champion()
            if champion:
                try:
                    spec, folder = self._registry_version(champion)
                    self._state = await self._load(self._build, spec, folder, resources)
                except Exception as exc:  # a broken champion must not keep the service down
                    self._failed(champion, exc)
            if self._state is None:
                self._state = await self._load(self._build, version_zero(self.settings), None, resources)
        self._publish_info()
        state = self.state
        log.info("event=model_loaded version=%s kind=%s backend=%s path=%s", state.model.version,
                 state.model.spec.kind, state.backend.backend, state.model.folder)

    async def reload(self, location: str) -> bool:
        """Load a promoted version and swap it in; any failure leaves the current model serving."""
        if self.pinned:
            log.info("event=reload_ignored reason=pinned location=%s", location)
            return False
        async with self._reload_lock:
            try:
                spec, folder = self._registry_version(location)
                if self._state and spec.version == self._state.model.version:
                    return True
                started = time.perf_counter()
                new = await self._load(self._build, spec, folder, self.state.index.resources)
            except Exception as exc:  # whatever a version's files hold, the service keeps serving
                self._failed(location, exc)
                return False
            self._state = new
            self.failed.pop(location, None)
            metrics.MODEL_RELOADS.labels("success").inc()
            self._publish_info()
            log.info("event=model_reloaded version=%s kind=%s backend=%s seconds=%.1f", spec.version,
                     spec.kind, new.backend.backend, time.perf_counter() - started)
            return True

    async def refresh_catalogue(self, resources: list[Resource]) -> None:
        """Re-index after catalogue changes; only new or changed texts are embedded."""
        async with self._reload_lock:
            state = self.state
            index = await self._load(self._index, state.model, resources)
            self._state = dataclasses.replace(state, index=index)
            log.info("event=catalogue_indexed resources=%d", len(resources))

    def count_served(self, version: str) -> None:
        self.served[version] = self.served.get(version, 0) + 1

    def info(self) -> dict[str, Any]:
        state = self.state
        spec = state.model.spec
        return {
            "version": spec.version,
            "kind": spec.kind,
            "base_model": spec.base_model,
            "embedding_model": spec.embedding_model,
            "path": str(state.model.folder) if state.model.folder else None,
            "pinned": self.pinned,
            "device": pick_device(self.settings.device),
            "backend": cross_backend(state.model.cross) if state.model.cross is not None else "torch",
            "backend_selection": dataclasses.asdict(state.backend) | {"setting": self.settings.backend},
            "weights": spec.weights,
            "max_length": spec.max_length,
            "loaded_at": state.model.loaded_at.isoformat(),
            "trained_at": spec.trained_at.isoformat() if spec.trained_at else None,
            "metrics": spec.metrics,
            "inferences_served": self.served.get(spec.version, 0),
            "inferences_served_total": sum(self.served.values()),
            "catalogue_size": len(state.index),
            "failed_versions": dict(self.failed),
        }


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
