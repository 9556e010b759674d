"""What the reranker serves, and the indexes behind it, kept filled and current in the background.

`ServedIndexes` holds the served `ServingState`: the champion, a challenger beside it in an
experiment, and their catalogue indexes. Requests read it once; every replacement (a version the
model holder swaps in, a catalogue change, a rebuilt BM25) is one assignment under one lock, so a
request in flight finishes on what it started with. It also fills the indexes' vectors: the
champion's, a challenger's own when it embeds with another model, and that of a version being
loaded with another embedder, which is filled completely before it serves. One `VectorFiller` per
vector identity in use; the lock serialises their puts with every replacement of the served state.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer

from shared.ml.ranking.backends import BackendChoice, onnx_cache
from shared.ml.ranking.fields import CatalogueSchema
from shared.ml.ranking.pipeline import RankingModel
from shared.ml.ranking.retrieval import CatalogueIndex, VectorTable
from shared.ml.runtime.embedder import Encoder, load_encoder
from shared.ml.runtime.vectors import StoredVectors, VectorFiller
from shared.records import Experiment, Resource
from shared.settings import Settings

log = logging.getLogger(__name__)


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
    """What answers a search: the champion on its index and backend, a challenger beside it."""

    model: RankingModel
    index: CatalogueIndex
    backend: BackendChoice
    challenger: Challenger | None = None

    @property
    def experiment(self) -> Experiment | None:
        return self.challenger.experiment if self.challenger else None

    @property
    def models(self) -> tuple[RankingModel, ...]:
        """The champion, and the challenger beside it."""
        return (self.model, self.challenger.model) if self.challenger else (self.model,)


class ServedIndexes:
    """The served state and its indexes; owned by the model holder, which decides what serves."""

    def __init__(self, settings: Settings, vectors: StoredVectors | None = None) -> None:
        self.settings = settings
        self.vectors = vectors
        """Where resource vectors are kept between starts and shared with other replicas."""
        self._state: ServingState | None = None
        # One encoder per loaded embedder, one filler per vector identity in use.
        self._encoders: weakref.WeakKeyDictionary[SentenceTransformer, Encoder] = weakref.WeakKeyDictionary()
        self._fillers: dict[str, VectorFiller] = {}
        self._pending: dict[str, CatalogueIndex] = {}
        """Indexes of versions being built, by vector identity: filled before they serve."""
        self._fillers_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        """Held to replace the served state, and by fillers to put vectors into its indexes."""
        self._merging = False

    @property
    def state(self) -> ServingState:
        if self._state is None:
            raise RuntimeError("no model loaded yet")
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is not None

    def swap(self, new: ServingState) -> ServingState:
        """Serve `new`: indexes built beside the served one first catch up with the catalogue changes
        applied meanwhile."""
        with self._swap_lock:
            if self._state is not None:
                champion_index = self._rebased(new.index, self._state.index)
                challenger = new.challenger
                if challenger is not None and challenger.index is not None:
                    challenger = dataclasses.replace(challenger, index=self._rebased(challenger.index,
                                                                                      champion_index))
                new = dataclasses.replace(new, index=champion_index, challenger=challenger)
            self._state = new
        self.fill_in_background()
        return new

    @staticmethod
    def _rebased(index: CatalogueIndex, onto: CatalogueIndex) -> CatalogueIndex:
        """`index` (built beside `onto`, from an earlier catalogue) on `onto`'s catalogue: the changes
        applied since are kept, and `index`'s vectors follow them by resource and text."""
        if index is onto or index.vectors is None or index.vectors is onto.vectors:
            return onto
        return onto.adopt_vectors(index)

    def replace(self, **changes: Any) -> None:
        """The served state with these fields changed, its indexes as they are."""
        with self._swap_lock:
            self._state = dataclasses.replace(self.state, **changes)

    def stop(self) -> None:
        """Stop every filler (the service is closing)."""
        for filler in list(self._fillers.values()):
            filler.stop()

    def _attach_encoder(self, model: RankingModel) -> None:
        if model.embedder is None:
            return
        encoder = self._encoders.get(model.embedder)
        if encoder is None:
            encoder = load_encoder(model.embedder, self.settings.embedding_backend, onnx_cache(self.settings),
                                   self.settings.torch_threads)
            self._encoders[model.embedder] = encoder
        model.encoder = encoder

    def index_for(self, model: RankingModel, base: CatalogueIndex | list[Resource]) -> CatalogueIndex:
        """`model`'s index (loader thread), its encoder attached: `base` itself, the served index,
        when it embeds with the same model; a copy of it with another embedder's vectors, all filled
        before this returns; or, on a first start, a new index over `base`'s resources (served at
        once; vectors fill in the background)."""
        self._attach_encoder(model)
        vectors_id = model.vectors_id
        if not isinstance(base, CatalogueIndex):
            index = CatalogueIndex(base, schema=CatalogueSchema.from_settings(self.settings))
            if model.embedder is not None and vectors_id is not None:
                index.vectors = VectorTable(self._dim(model), len(index), vectors_id)
            return index
        if vectors_id is None or (base.vectors is not None and base.vectors.model_id == vectors_id):
            return base
        index = copy.copy(base)
        index.vectors = VectorTable(self._dim(model), len(index), vectors_id)
        self._pending[vectors_id] = index
        try:
            filler = self._filler(model)
            log.info("event=embedding_new_model model=%s resources=%d", vectors_id, index.live_count)
            filler.run()  # every vector before it serves; the served version answers meanwhile
        finally:
            self._pending.pop(vectors_id, None)
        return index

    @staticmethod
    def _dim(model: RankingModel) -> int:
        assert model.embedder is not None
        return int(model.embedder.get_embedding_dimension() or len(model.embed_texts(["a"])[0]))

    def _index_of(self, vectors_id: str) -> CatalogueIndex | None:
        """The index whose vectors have this identity: one being built, the champion's, or the
        challenger's own."""
        if vectors_id in self._pending:
            return self._pending[vectors_id]
        state = self._state
        if state is None:
            return None
        for index in (state.index, state.challenger.index if state.challenger else None):
            if index is not None and index.vectors is not None and index.vectors.model_id == vectors_id:
                return index
        return None

    def _filler(self, model: RankingModel) -> VectorFiller:
        vectors_id = model.vectors_id
        assert vectors_id is not None
        filler = self._fillers.get(vectors_id)
        if filler is None:
            filler = VectorFiller(model.embed_texts, vectors_id, self.vectors,
                                  lambda: self._index_of(vectors_id), self._swap_lock,
                                  chunk=self.settings.embedding_chunk)
            self._fillers[vectors_id] = filler
        return filler

    def fill_in_background(self) -> None:
        """A filler for each vector identity served, woken; the others stopped."""
        with self._fillers_lock:
            self._start_fillers()

    def _start_fillers(self) -> None:
        state = self._state
        if state is None:
            return
        wanted = {m.vectors_id: m for m in state.models if m.vectors_id is not None}
        for vectors_id in list(self._fillers):
            if vectors_id not in wanted and vectors_id not in self._pending:
                self._fillers.pop(vectors_id).stop(timeout_s=0)
        for model in wanted.values():
            filler = self._filler(model)
            filler.publish = model is state.model
            if not filler.started:
                filler.start()
            filler.wake()

    async def apply_changes(self, changed: list[Resource], withdrawn: Sequence[str] = ()) -> int:
        """Added or updated resources, searchable as soon as this returns (BM25 at once, the dense
        part once their vectors are in), and withdrawn ones (hidden or removed), never matched
        again; a background rebuild merges the delta and drops what is no longer served when they
        grow. Returns how many resources the change actually touched."""
        if not changed and not withdrawn:
            return 0
        touched = await asyncio.to_thread(self._apply, changed, withdrawn)
        if touched:
            self.fill_in_background()
            index = self.state.index
            log.info("event=catalogue_changed resources=%d delta=%d served=%d", touched, index.delta_size(),
                     index.live_count)
            if index.stale() >= self.settings.delta_merge_at and not self._merging:
                self._merging = True
                asyncio.get_running_loop().create_task(self._merge())
        return touched

    def _apply(self, changed: list[Resource], withdrawn: Sequence[str]) -> int:
        with self._swap_lock:
            state = self.state
            updated = state.index.with_changes(changed)
            index = updated.without(withdrawn)
            if index is state.index:
                return 0
            challenger = state.challenger
            if challenger is not None and challenger.index is not None:
                challenger = dataclasses.replace(challenger,
                                                 index=challenger.index.with_changes(changed).without(withdrawn))
            self._state = dataclasses.replace(state, index=index, challenger=challenger)
            return len(updated) - len(state.index) + updated.live_count - index.live_count

    async def _merge(self) -> None:
        """Rebuild BM25 over the live resources off the request path, then swap it in with the
        changes that came meanwhile; vectors follow by resource and text."""
        try:
            started = time.perf_counter()
            snapshot = self.state.index
            rebuilt = await asyncio.to_thread(CatalogueIndex, snapshot.live_resources(),
                                              schema=snapshot.schema)
            await asyncio.to_thread(self._install_merged, snapshot, rebuilt)
            log.info("event=catalogue_merged resources=%d seconds=%.1f", len(self.state.index),
                     time.perf_counter() - started)
        except Exception:  # the delta keeps serving; the next change tries again
            log.exception("event=catalogue_merge_failed")
        finally:
            self._merging = False

    def _install_merged(self, snapshot: CatalogueIndex, rebuilt: CatalogueIndex) -> None:
        with self._swap_lock:
            state = self.state
            merged = rebuilt.with_changes(since_snapshot(snapshot, state.index))
            merged = merged.without(withdrawn_since_snapshot(snapshot, state.index))
            index = merged.adopt_vectors(state.index) if state.index.vectors is not None else merged
            challenger = state.challenger
            if challenger is not None and challenger.index is not None:
                challenger = dataclasses.replace(challenger, index=merged.adopt_vectors(challenger.index))
            self._state = dataclasses.replace(state, index=index, challenger=challenger)

    def catalogue_info(self) -> dict[str, Any]:
        """The served index: resources, their languages, how many sit in the delta, when BM25 was
        last built."""
        index = self.state.index
        return {"resources": index.live_count, "languages": list(index.languages),
                "filter_fields": list(index.schema.filter_fields), "delta": index.delta_size(),
                "merging": self._merging,
                "built_at": datetime.fromtimestamp(index.built_at, UTC).isoformat(),
                "memory_bytes": index.memory_bytes()}

    def embedding_info(self, model: RankingModel) -> dict[str, Any] | None:
        """How far the model's vectors got and where they came from (None: it has no dense scorer)."""
        vectors_id = model.vectors_id
        filler = self._fillers.get(vectors_id) if vectors_id is not None else None
        if filler is None or model.encoder is None:
            return None
        return {"model_id": vectors_id, "stored": self.vectors is not None, "backend": model.encoder.backend,
                "backend_reason": model.encoder.reason, **filler.progress.as_dict()}



def since_snapshot(snapshot: CatalogueIndex, now: CatalogueIndex) -> list[Resource]:
    """The resources added or changed after `snapshot` and still served in `now` (a later index)."""
    start = len(snapshot.resources)
    return [r for r, served in zip(now.resources[start:], now.live[start:], strict=True) if served]


def withdrawn_since_snapshot(snapshot: CatalogueIndex, now: CatalogueIndex) -> list[str]:
    """The ids `snapshot` served that `now` (a later index) no longer serves at all."""
    start = len(snapshot.resources)
    gone = np.flatnonzero(snapshot.live & ~now.live[:start])
    return [snapshot.resources[p].id for p in gone if snapshot.resources[p].id not in now.position]
