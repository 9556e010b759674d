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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.reranker.indexes import ServedIndexes
from shared import metrics
from shared.ml.backends import BackendChoice, choose_backend
from shared.ml.model import cross_backend, pick_device
from shared.ml.pipeline import (
    SPEC_FILE,
    VERSION_ZERO,
    PipelineSpec,
    RankingModel,
    served_version,
    version_zero,
)
from shared.ml.registry import Registry
from shared.ml.retrieval import CatalogueIndex
from shared.ml.vectors import StoredVectors
from shared.settings import Settings
from shared.store import Experiment, Resource

log = logging.getLogger(__name__)

def pinned_spec(settings: Settings, folder: Path) -> PipelineSpec:
    """`CROSS_ENCODER_PATH`: a registry version folder as is, or a bare cross-encoder folder."""
    if (folder / SPEC_FILE).exists():
        return PipelineSpec.load(folder)
    return PipelineSpec(version=f"pinned:{folder.name}", base_model=str(folder), cross_encoder=".",
                        weights={"cross": 1.0}, max_length=settings.max_length)


@dataclass(frozen=True)
class Challenger:
    """The version users compare with the champion while an experiment runs, and that experiment."""

    model: RankingModel
    experiment: Experiment
    backend: BackendChoice
    # Its own index when it embeds with another model; else it shares the champion's.
    index: CatalogueIndex | None = None


@dataclass(frozen=True)
class ServingState:
    model: RankingModel
    index: CatalogueIndex
    backend: BackendChoice
    challenger: Challenger | None = None

    @property
    def experiment(self) -> Experiment | None:
        return self.challenger.experiment if self.challenger else None


class ModelHolder(ServedIndexes):
    def __init__(self, settings: Settings, vectors: StoredVectors | None = None) -> None:
        self.settings = settings
        self.registry = Registry(settings.model_dir)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._state: ServingState | None = None
        self._init_indexes(settings, vectors)
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
        self.stop_fillers()
        self.loader.shutdown(wait=True, cancel_futures=True)
        self.executor.shutdown(wait=True)

    # Loading (loader thread)
    def _loaded(self, spec: PipelineSpec, folder: Path | None,
                base: CatalogueIndex | list[Resource]) -> tuple[RankingModel, CatalogueIndex, BackendChoice]:
        """A version loaded, indexed, on its backend and warm; an embedder already loaded is shared.

        `base`: the served index (a new version shares its BM25, and its vectors too when it embeds
        with the same model; another embedder's vectors are all built here, before it serves), or
        the resources of a first start (served at once; vectors fill in the background)."""
        reuse = None
        if self._state is not None:
            for loaded in (self._state.model, *((self._state.challenger.model,) if self._state.challenger
                                                 else ())):
                if loaded.embedder is not None and loaded.spec.embedding_model == spec.embedding_model:
                    reuse = loaded.embedder
        model = RankingModel.load(spec, folder, self.settings.device, embedder=reuse)
        self._attach_encoder(model)
        index = self._index(model, base)
        model.warm_up(index)
        model, backend = choose_backend(model, index, self.settings)
        model.warm_up(index)
        return model, index, backend

    def _build(self, spec: PipelineSpec, folder: Path | None,
               base: CatalogueIndex | list[Resource]) -> ServingState:
        model, index, backend = self._loaded(spec, folder, base)
        return ServingState(model=model, index=index, backend=backend)

    def _build_challenger(self, spec: PipelineSpec, folder: Path | None, experiment: Experiment,
                          state: ServingState) -> Challenger:
        """The challenger beside the champion: the first stage, the catalogue index and the
        embeddings are shared wherever both use the same embedding model."""
        model, index, backend = self._loaded(spec, folder, state.index)
        shared = index is state.index or index.vectors is None
        return Challenger(model=model, experiment=experiment, backend=backend,
                          index=None if shared else index)

    def _publish_info(self) -> None:
        state = self.state
        spec = state.model.spec
        metrics.SERVED_MODEL.info({"version": spec.version, "base": spec.base_model, "kind": spec.kind,
                                   "backend": state.backend.backend})
        number = spec.version[1:] if spec.version.startswith("v") and spec.version[1:].isdigit() else "-1"
        metrics.SERVED_MODEL_VERSION.set(int(number))

    def _version(self, name: str) -> tuple[PipelineSpec, Path | None]:
        return served_version(self.settings, self.registry, name)

    def _failed(self, location: str, exc: BaseException) -> None:
        metrics.MODEL_RELOADS.labels("failed").inc()
        self.failed[location] = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.error("event=reload_failed location=%s error=%r", location, self.failed[location])

    async def load_initial(self, resources: list[Resource]) -> None:
        """`CROSS_ENCODER_PATH` (a failure stops start-up), else the champion, else version 0.
        Ready once BM25 is built: the vectors are read from the store or embedded in the background."""
        if self.settings.cross_encoder_path is not None:
            folder = Path(self.settings.cross_encoder_path).resolve()
            self._state = await self._load(self._build, pinned_spec(self.settings, folder), folder, resources)
        else:
            champion = self.registry.champion()
            if champion:
                try:
                    spec, folder = self._version(champion)
                    self._state = await self._load(self._build, spec, folder, resources)
                except Exception as exc:  # a broken champion must not keep the service down
                    self._failed(champion, exc)
            if self._state is None:
                self._state = await self._load(self._build, version_zero(self.settings), None, resources)
        self._fill_in_background()
        self._publish_info()
        state = self.state
        log.info("event=model_loaded version=%s kind=%s backend=%s path=%s resources=%d", state.model.version,
                 state.model.spec.kind, state.backend.backend, state.model.folder, len(state.index))

    def _swap(self, model: RankingModel, index: CatalogueIndex, backend: BackendChoice,
              challenger: Challenger | None) -> ServingState:
        """Serve this (under the swap lock): indexes built beside the served one first catch up
        with the catalogue changes applied meanwhile."""
        with self._swap_lock:
            champion_index = self._rebased(index, self.state.index)
            if challenger is not None and challenger.index is not None:
                own = self._rebased(challenger.index, champion_index)
                challenger = dataclasses.replace(challenger, index=own)
            self._state = ServingState(model=model, index=champion_index, backend=backend,
                                       challenger=challenger)
        self._fill_in_background()
        return self._state

    async def reload(self, location: str) -> bool:
        """Load a promoted version (`v0`: version 0) and swap it in; any failure leaves the current
        model serving. A challenger users just preferred is already loaded: it is swapped in as is.
        A version with another embedder has all its vectors before it serves."""
        if self.pinned:
            log.info("event=reload_ignored reason=pinned location=%s", location)
            return False
        async with self._reload_lock:
            try:
                spec, folder = self._version(location)
                state = self.state
                if spec.version == state.model.version:
                    return True
                started = time.perf_counter()
                challenger = state.challenger
                if challenger is not None and challenger.model.version == spec.version:
                    new = ServingState(model=challenger.model, index=challenger.index or state.index,
                                       backend=challenger.backend)
                else:
                    new = await self._load(self._build, spec, folder, state.index)
            except Exception as exc:  # whatever a version's files hold, the service keeps serving
                self._failed(location, exc)
                return False
            new = await asyncio.to_thread(self._swap, new.model, new.index, new.backend, None)
            self.failed.pop(location, None)
            metrics.MODEL_RELOADS.labels("success").inc()
            self._publish_info()
            log.info("event=model_reloaded version=%s kind=%s backend=%s seconds=%.1f", spec.version,
                     spec.kind, new.backend.backend, time.perf_counter() - started)
            return True

    async def follow(self, champion: str | None, experiment: Experiment | None) -> None:
        """Serve what the registry and the store say: their champion, and beside it the running
        experiment's challenger. Called on every `model.ready` and by the watcher."""
        if self.pinned:
            return
        wanted = champion or VERSION_ZERO
        if wanted != self.state.model.version and wanted not in self.failed:
            await self.reload(wanted)
        await self.set_experiment(experiment)

    async def set_experiment(self, experiment: Experiment | None) -> None:
        """Load the experiment's challenger beside the champion, or drop it when none runs."""
        if self.pinned:
            return
        async with self._reload_lock:
            state = self.state
            current = state.challenger
            if experiment is not None and experiment.champion != state.model.version:
                experiment = None  # for another champion: it waits until this replica serves that one
            if experiment is None:
                if current is not None:
                    with self._swap_lock:
                        self._state = dataclasses.replace(self.state, challenger=None)
                    self._fill_in_background()
                    log.info("event=challenger_dropped version=%s experiment=%s", current.model.version,
                             current.experiment.experiment_id)
                return
            if current is not None and current.model.version == experiment.challenger:
                if current.experiment != experiment:
                    with self._swap_lock:
                        self._state = dataclasses.replace(self.state, challenger=dataclasses.replace(
                            current, experiment=experiment))
                return
            if experiment.challenger in self.failed:
                return
            started = time.perf_counter()
            try:
                spec, folder = self._version(experiment.challenger)
                challenger = await self._load(self._build_challenger, spec, folder, experiment, state)
            except Exception as exc:  # a challenger that does not load leaves the champion serving alone
                self._failed(experiment.challenger, exc)
                return
            now = self.state
            await asyncio.to_thread(self._swap, now.model, now.index, now.backend, challenger)
            log.info("event=challenger_loaded version=%s experiment=%s kind=%s share=%s seconds=%.1f",
                     spec.version, experiment.experiment_id, experiment.kind, experiment.share,
                     time.perf_counter() - started)

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
            "catalogue_size": state.index.live_count,
            "catalogue": self.catalogue_info(),
            "embedding": self.embedding_info(state.model),
            "failed_versions": dict(self.failed),
            "experiment": self.experiment_info(),
        }

    def experiment_info(self) -> dict[str, Any] | None:
        """The running experiment as this replica serves it (None: the champion serves alone)."""
        challenger = self.state.challenger
        if challenger is None:
            return None
        experiment, spec = challenger.experiment, challenger.model.spec
        return {"experiment_id": experiment.experiment_id, "kind": experiment.kind,
                "champion": experiment.champion, "challenger": experiment.challenger,
                "share": experiment.share, "started_at": experiment.started_at.isoformat(),
                "challenger_kind": spec.kind, "challenger_weights": spec.weights,
                "challenger_backend": challenger.backend.backend,
                "challenger_loaded_at": challenger.model.loaded_at.isoformat(),
                "shares_index": challenger.index is None}
