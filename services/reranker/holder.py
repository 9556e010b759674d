"""The model holder: which versions serve, and the one path by which a new one comes to serve.

Scoring runs on one dedicated thread (`executor`); loading, warm-up, backend selection and
re-indexing run on another (`loader`), so a reload never queues requests behind it. What is
served lives in the holder's `indexes` (`ServedIndexes`): requests read `holder.state` once, and a
swap is one reference assignment, so a request in flight finishes on the model it started with.
After start-up, `follow` alone brings a new champion or challenger in: the `model.ready` consumer
and the registry watcher both call it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.reranker.indexes import Challenger, ServedIndexes, ServingState
from shared import metrics
from shared.evidence.clicks import Examination, prior_examination
from shared.ml.ranking.backends import BackendChoice, CalibrationSet, calibration_sets, choose_backend
from shared.ml.ranking.pipeline import SPEC_FILE, PipelineSpec, RankingModel, served_version, version_zero
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.registry import METADATA_FILE, Registry
from shared.ml.runtime.device import pick_device
from shared.ml.runtime.loading import cross_backend
from shared.ml.runtime.pair_tokens import PairTokens
from shared.ml.runtime.score_cache import ScoreCache
from shared.ml.runtime.vectors import StoredVectors
from shared.records import Experiment, Resource
from shared.settings import Settings
from shared.store.models import ModelStore

log = logging.getLogger(__name__)


def pinned_spec(settings: Settings, folder: Path) -> PipelineSpec:
    """`CROSS_ENCODER_PATH`: a registry version folder as is, or a bare cross-encoder folder."""
    if (folder / SPEC_FILE).exists():
        return PipelineSpec.load(folder)
    return PipelineSpec(version=f"pinned:{folder.name}", base_model=str(folder), cross_encoder=".",
                        weights={"cross": 1.0}, max_length=settings.max_length)


def click_model_of(folder: Path | None) -> Examination:
    """The click model a version's training run estimated (its metadata), else the prior."""
    if folder is None or not (folder / METADATA_FILE).is_file():
        return prior_examination()
    try:
        found = json.loads((folder / METADATA_FILE).read_text()).get("click_model")
        return Examination.from_dict(found) if found else prior_examination()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("event=click_model_unreadable folder=%s error=%r", folder, exc)
        return prior_examination()


def pair_tokens_for(model: RankingModel, index: CatalogueIndex,
                    sets: list[CalibrationSet]) -> PairTokens | None:
    """The served cross-encoder's ids per resource text, if they build its own inputs on the
    calibration queries `sets` (else its tokenizer runs on every pair, as before; logged).

    Ids are kept for twice the catalogue's texts (room for those added or edited since the load):
    as int32 they take about the texts' own memory, whatever the score cache's bound."""
    assert model.cross is not None
    tokens = PairTokens(model.cross.tokenizer, model.cross.max_length, max(2 * len(index), 1_000))
    pairs = [(query, index.resources[p].text) for query, top, _ in sets for p in top]
    if tokens.matches(model.cross.preprocess, pairs):
        return tokens
    log.warning("event=pair_tokens_unused version=%s reason=%r", model.version,
                "no pairs to check" if not pairs else "its tokenizer builds pairs another way")
    return None


class ModelHolder:
    def __init__(self, settings: Settings, experiments: ModelStore,
                 vectors: StoredVectors | None = None) -> None:
        self.settings = settings
        self.experiments = experiments
        """Where the running experiment is read: its challenger serves beside the champion."""
        self.registry = Registry(settings.model_dir)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.indexes = ServedIndexes(settings, vectors)
        self._reload_lock = asyncio.Lock()
        self.served: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        """Versions that failed to load, with the error; the watcher does not retry them."""
        self.pinned = settings.cross_encoder_path is not None
        self.click_model = prior_examination()
        """Where people look, as the served version's training run estimated it."""

    @property
    def state(self) -> ServingState:
        return self.indexes.state

    @property
    def ready(self) -> bool:
        return self.indexes.ready

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run CPU-heavy request work on the model thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _load(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.loader, fn, *args)

    def close(self) -> None:
        self.indexes.stop()
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
        for loaded in self.state.models if self.ready else ():
            if loaded.embedder is not None and loaded.spec.embedding_model == spec.embedding_model:
                reuse = loaded.embedder
        model = RankingModel.load(spec, folder, self.settings.device, embedder=reuse)
        index = self.indexes.index_for(model, base)
        model.warm_up(index)
        sets = calibration_sets(index)
        model, backend = choose_backend(model, index, self.settings, sets)
        if model.cross is not None:
            model.depth = self.settings.rerank_depth
            model.cross_cache = ScoreCache(self.settings.cross_cache_entries)
            model.pair_tokens = pair_tokens_for(model, index, sets)
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
        self.click_model = click_model_of(state.model.folder)
        for rank, (p, low, high) in enumerate(zip(self.click_model.propensity, self.click_model.low,
                                                  self.click_model.high, strict=True), start=1):
            for bound, value in (("estimate", p), ("low", low), ("high", high)):
                metrics.CLICK_EXAMINATION.labels(str(rank), bound).set(value)

    def _version(self, name: str) -> tuple[PipelineSpec, Path | None]:
        return served_version(self.settings, self.registry, name)

    def _failed(self, location: str, exc: BaseException) -> None:
        metrics.MODEL_RELOADS.labels("failed").inc()
        self.failed[location] = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.error("event=reload_failed location=%s error=%r", location, self.failed[location])

    async def load_initial(self, resources: list[Resource]) -> None:
        """`CROSS_ENCODER_PATH` (a failure stops start-up), else the champion, else version 0.
        Ready once BM25 is built: the vectors are read from the store or embedded in the background."""
        first: ServingState | None = None
        if self.settings.cross_encoder_path is not None:
            folder = Path(self.settings.cross_encoder_path).resolve()
            first = await self._load(self._build, pinned_spec(self.settings, folder), folder, resources)
        else:
            champion = self.registry.champion()
            if champion:
                try:
                    spec, folder = self._version(champion)
                    first = await self._load(self._build, spec, folder, resources)
                except Exception as exc:  # a broken champion must not keep the service down
                    self._failed(champion, exc)
            if first is None:
                first = await self._load(self._build, version_zero(self.settings), None, resources)
        state = self.indexes.swap(first)
        self._publish_info()
        log.info("event=model_loaded version=%s kind=%s backend=%s path=%s resources=%d", state.model.version,
                 state.model.spec.kind, state.backend.backend, state.model.folder, len(state.index))

    # Following the registry and the store
    async def follow(self, champion: str | None = None, *, announced: bool = False) -> None:
        """Serve `champion` (a version name or its location; None: the served one stays) and, beside
        it, the challenger of the store's running experiment: the one way a version comes to serve
        after start-up. `announced`: `model.ready` named it, so it is loaded even where it failed
        before; the registry watcher, which calls this every few seconds, leaves a failed one be."""
        if champion is not None and (announced or not (
                self.pinned or champion == self.state.model.version or champion in self.failed)):
            await self._reload(champion)
        await self._set_experiment(await self.experiments.running_experiment())

    async def _reload(self, location: str) -> bool:
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
            new = await asyncio.to_thread(self.indexes.swap, new)
            self.failed.pop(location, None)
            metrics.MODEL_RELOADS.labels("success").inc()
            self._publish_info()
            log.info("event=model_reloaded version=%s kind=%s backend=%s seconds=%.1f", spec.version,
                     spec.kind, new.backend.backend, time.perf_counter() - started)
            return True

    async def _set_experiment(self, experiment: Experiment | None) -> None:
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
                    self.indexes.replace(challenger=None)
                    self.indexes.fill_in_background()
                    log.info("event=challenger_dropped version=%s experiment=%s", current.model.version,
                             current.experiment.experiment_id)
                return
            if current is not None and current.model.version == experiment.challenger:
                if current.experiment != experiment:
                    self.indexes.replace(challenger=dataclasses.replace(current, experiment=experiment))
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
            await asyncio.to_thread(self.indexes.swap, dataclasses.replace(self.state, challenger=challenger))
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
            # The cross-encoder's share of the work: how deep it reranks, what its cache saved.
            "rerank_depth": state.model.depth if state.model.cross is not None else None,
            "cross_cache": state.model.cross_cache.info() if state.model.cross_cache is not None else None,
            "loaded_at": state.model.loaded_at.isoformat(),
            "trained_at": spec.trained_at.isoformat() if spec.trained_at else None,
            "metrics": spec.metrics,
            "inferences_served": self.served.get(spec.version, 0),
            "inferences_served_total": sum(self.served.values()),
            "catalogue_size": state.index.live_count,
            "catalogue": self.indexes.catalogue_info(),
            "embedding": self.indexes.embedding_info(state.model),
            "failed_versions": dict(self.failed),
            "experiment": self.experiment_info(),
            # Where people look, as the training run that made this version estimated it from
            # traffic (version 0: 1/rank, before any traffic); docs/online.md#where-people-look.
            "click_model": self.click_model.as_dict(),
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
