"""The model holder: what is served now, and how a new version or catalogue replaces it.

Everything CPU-heavy runs on one dedicated thread (`model_executor`): scoring, loading,
embedding. Requests read `holder.state` once, so a swap never changes a request mid-way.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import metrics
from shared.ml.model import ModelLoadError, pick_device
from shared.ml.pipeline import SPEC_FILE, PipelineSpec, RankingModel, version_zero
from shared.ml.registry import Registry, RegistryError
from shared.ml.retrieval import CatalogueIndex, EmbeddingCache
from shared.settings import Settings
from shared.store import Resource

log = logging.getLogger(__name__)


def pinned_spec(settings: Settings, folder: Path) -> PipelineSpec:
    """`CROSS_ENCODER_PATH`: a registry version folder as is, or a bare cross-encoder folder."""
    if (folder / SPEC_FILE).exists():
        return PipelineSpec.load(folder)
    return PipelineSpec(version=f"pinned:{folder.name}", base_model=str(folder), cross_encoder=".",
                        weights={"cross": 1.0}, max_length=settings.max_length)


@dataclass(frozen=True)
class ServingState:
    model: RankingModel
    index: CatalogueIndex


class ModelHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.model_dir)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._state: ServingState | None = None
        self._caches: dict[str, EmbeddingCache] = {}
        self._reload_lock = asyncio.Lock()
        self.served: dict[str, int] = {}
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
        """Run CPU-heavy work on the model thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # Loading
    def _initial(self) -> tuple[PipelineSpec, Path | None]:
        if self.settings.cross_encoder_path is not None:
            folder = Path(self.settings.cross_encoder_path).resolve()
            return pinned_spec(self.settings, folder), folder
        champion = self.registry.champion()
        if champion:
            folder = self.registry.resolve(champion)
            return PipelineSpec.load(folder), folder
        return version_zero(self.settings), None

    def _build(self, spec: PipelineSpec, folder: Path | None, resources: list[Resource]) -> ServingState:
        current = self._state.model if self._state else None
        reuse = None
        if current is not None and current.spec.embedding_model == spec.embedding_model:
            reuse = current.embedder
        model = RankingModel.load(spec, folder, self.settings.device, embedder=reuse)
        index = self._index(model, resources)
        model.warm_up(index)
        return ServingState(model=model, index=index)

    def _index(self, model: RankingModel, resources: list[Resource]) -> CatalogueIndex:
        if model.embedder is None:
            return CatalogueIndex(resources)
        key = model.spec.embedding_model or model.spec.base_model
        cache = self._caches.setdefault(key, EmbeddingCache(model.embed_texts))
        return CatalogueIndex(resources, cache([r.text for r in resources]))

    def _publish_info(self) -> None:
        spec = self.state.model.spec
        metrics.SERVED_MODEL.info({"version": spec.version, "base": spec.base_model, "kind": spec.kind})
        number = spec.version[1:] if spec.version.startswith("v") and spec.version[1:].isdigit() else "-1"
        metrics.SERVED_MODEL_VERSION.set(int(number))

    async def load_initial(self, resources: list[Resource]) -> None:
        spec, folder = self._initial()
        self._state = await self.run(self._build, spec, folder, resources)
        self._publish_info()
        log.info("event=model_loaded version=%s kind=%s path=%s", spec.version, spec.kind, folder)

    async def reload(self, location: str) -> bool:
        """Load a promoted version and swap it in; any failure leaves the current model serving."""
        if self.pinned:
            log.info("event=reload_ignored reason=pinned location=%s", location)
            return False
        async with self._reload_lock:
            try:
                folder = self.registry.resolve(location)
                spec = PipelineSpec.load(folder)
                if self._state and spec.version == self._state.model.version:
                    return True
                new = await self.run(self._build, spec, folder, self.state.index.resources)
            except (RegistryError, ModelLoadError, OSError, ValueError, RuntimeError) as exc:
                metrics.MODEL_RELOADS.labels("failed").inc()
                log.error("event=reload_failed location=%s error=%r", location, str(exc)[:300])
                return False
            self._state = new
            metrics.MODEL_RELOADS.labels("success").inc()
            self._publish_info()
            log.info("event=model_reloaded version=%s kind=%s", spec.version, spec.kind)
            return True

    async def refresh_catalogue(self, resources: list[Resource]) -> None:
        """Re-index after catalogue changes; only new or changed texts are embedded."""
        async with self._reload_lock:
            model = self.state.model
            index = await self.run(self._index, model, resources)
            self._state = ServingState(model=model, index=index)
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
            "backend": "torch",
            "weights": spec.weights,
            "max_length": spec.max_length,
            "loaded_at": state.model.loaded_at.isoformat(),
            "trained_at": spec.trained_at.isoformat() if spec.trained_at else None,
            "metrics": spec.metrics,
            "inferences_served": self.served.get(spec.version, 0),
            "catalogue_size": len(state.index),
        }
