"""The served indexes: each version's vectors filled in the background, catalogue changes applied.

Part of the model holder (`ModelHolder` derives from `ServedIndexes`): the champion's index, a
challenger's own when it embeds with another model, and the index of a version being loaded
with another embedder, which is filled completely before it serves. One `VectorFiller` per
vector identity in use; the swap lock serialises their puts with every replacement of the
served indexes.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import threading
import time
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sentence_transformers import SentenceTransformer

from shared.ml.backends import onnx_cache
from shared.ml.embedder import Encoder, load_encoder
from shared.ml.pipeline import RankingModel
from shared.ml.retrieval import CatalogueIndex, VectorTable
from shared.ml.vectors import StoredVectors, VectorFiller
from shared.settings import Settings
from shared.store import Resource

if TYPE_CHECKING:
    from services.reranker.serving import ServingState

log = logging.getLogger(__name__)


class ServedIndexes:
    settings: Settings
    vectors: StoredVectors | None
    _state: ServingState | None
    state: ServingState  # the holder's property: what is served now

    def _init_indexes(self, settings: Settings, vectors: StoredVectors | None) -> None:
        self.settings = settings
        self.vectors = vectors
        """Where resource vectors are kept between starts and shared with other replicas."""
        # One encoder per loaded embedder, one filler per vector identity in use.
        self._encoders: weakref.WeakKeyDictionary[SentenceTransformer, Encoder] = weakref.WeakKeyDictionary()
        self._fillers: dict[str, VectorFiller] = {}
        self._pending: dict[str, CatalogueIndex] = {}
        """Indexes of versions being built, by vector identity: filled before they serve."""
        self._fillers_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        """Held to replace the served indexes, and by fillers to put vectors into them."""
        self._merging = False

    def stop_fillers(self) -> None:
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

    def _index(self, model: RankingModel, base: CatalogueIndex | list[Resource]) -> CatalogueIndex:
        vectors_id = model.vectors_id
        if not isinstance(base, CatalogueIndex):
            index = CatalogueIndex(base)
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

    def _fill_in_background(self) -> None:
        """A filler for each vector identity served, woken; the others stopped."""
        with self._fillers_lock:
            self._start_fillers()

    def _start_fillers(self) -> None:
        state = self._state
        if state is None:
            return
        wanted = {m.vectors_id: m for m in (state.model, *((state.challenger.model,) if state.challenger
                                                           else ())) if m.vectors_id is not None}
        for vectors_id in list(self._fillers):
            if vectors_id not in wanted and vectors_id not in self._pending:
                self._fillers.pop(vectors_id).stop(timeout_s=0)
        for model in wanted.values():
            filler = self._filler(model)
            filler.publish = model is state.model
            if filler._thread is None:
                filler.start()
            filler.wake()

    @staticmethod
    def _rebased(index: CatalogueIndex, onto: CatalogueIndex) -> CatalogueIndex:
        """`index` (built beside `onto`, from an earlier catalogue) on `onto`'s catalogue: the changes
        applied since are kept, and `index`'s vectors follow them by resource and text."""
        if index is onto or index.vectors is None or index.vectors is onto.vectors:
            return onto
        return onto.adopt_vectors(index)

    async def apply_changes(self, changed: list[Resource]) -> int:
        """Added or updated resources, searchable as soon as this returns (BM25 at once, the dense
        part once their vectors are in); a background rebuild merges the delta when it grows.
        Returns how many resources the change actually touched."""
        if not changed:
            return 0
        touched = await asyncio.to_thread(self._apply, changed)
        if touched:
            self._fill_in_background()
            log.info("event=catalogue_changed resources=%d delta=%d", touched, self.state.index.delta_size())
            if self.state.index.delta_size() >= self.settings.delta_merge_at and not self._merging:
                self._merging = True
                asyncio.get_running_loop().create_task(self._merge())
        return touched

    def _apply(self, changed: list[Resource]) -> int:
        with self._swap_lock:
            state = self.state
            index = state.index.with_changes(changed)
            if index is state.index:
                return 0
            challenger = state.challenger
            if challenger is not None and challenger.index is not None:
                challenger = dataclasses.replace(challenger, index=challenger.index.with_changes(changed))
            self._state = dataclasses.replace(state, index=index, challenger=challenger)
            return len(index) - len(state.index)

    async def _merge(self) -> None:
        """Rebuild BM25 over the live resources off the request path, then swap it in with the
        changes that came meanwhile; vectors follow by resource and text."""
        try:
            started = time.perf_counter()
            snapshot = self.state.index
            rebuilt = await asyncio.to_thread(CatalogueIndex, snapshot.live_resources())
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
            merged = rebuilt.with_changes(state.index.resources[len(snapshot.resources):])
            index = merged.adopt_vectors(state.index) if state.index.vectors is not None else merged
            challenger = state.challenger
            if challenger is not None and challenger.index is not None:
                challenger = dataclasses.replace(challenger, index=merged.adopt_vectors(challenger.index))
            self._state = dataclasses.replace(state, index=index, challenger=challenger)

    def catalogue_info(self) -> dict[str, Any]:
        """The served index: resources, how many sit in the delta, when BM25 was last built."""
        index = self.state.index
        return {"resources": index.live_count, "delta": index.delta_size(), "merging": self._merging,
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

