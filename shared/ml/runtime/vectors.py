"""Resource vectors computed once per embedding model and text, kept in the store for every process.

A vector's key is (the embedding model's identity, the hash of the text it embeds).
`embedder_identity` digests the model's weights and settings, so a fine-tuned or re-configured
model never reads another model's vectors; a resource whose text changed gets a new key, hence
one new embedding. A replica that starts on an unchanged catalogue reads every vector back and
embeds nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from shared import metrics
from shared.records import text_hash
from shared.store import Store, StoreUnavailableError

if TYPE_CHECKING:
    from shared.ml.ranking.retrieval import CatalogueIndex

log = logging.getLogger(__name__)

T = TypeVar("T")
READ_CHUNK = 20_000
"""Keys per read from the store: one round trip for many, without one huge answer."""


class StoredVectors:
    """The store's vector operations for code on a worker thread: model work runs off the event
    loop, while the store's async client belongs to that loop."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, timeout_s: float = 120.0) -> None:
        self.store, self.loop, self.timeout_s = store, loop, timeout_s

    def _wait(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            call.close()
            raise RuntimeError("StoredVectors is for worker threads; on the event loop, await the store")
        future = asyncio.run_coroutine_threadsafe(call, self.loop)
        try:
            return future.result(self.timeout_s)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise StoreUnavailableError(f"the store did not answer within {self.timeout_s}s") from exc

    def get(self, model_id: str, keys: list[str]) -> dict[str, np.ndarray]:
        return self._wait(self.store.get_vectors(model_id, keys))

    def put(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        self._wait(self.store.put_vectors(model_id, vectors))

    def read(self, model_id: str, keys: list[str]) -> dict[str, np.ndarray]:
        """`get`, or nothing when the store does not answer: the texts are embedded here instead,
        slower, still served."""
        try:
            return self.get(model_id, keys) if keys else {}
        except StoreUnavailableError as exc:
            log.warning("event=vectors_read_failed model=%s error=%s", model_id, exc)
            return {}

    def write(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        """`put`, or a warning when the store does not answer: the vectors are used all the same,
        and the next start embeds them again."""
        try:
            self.put(model_id, vectors)
        except StoreUnavailableError as exc:
            log.warning("event=vectors_write_failed model=%s count=%d error=%s", model_id, len(vectors), exc)


@dataclass
class EmbeddingProgress:
    """How far the vectors of the served catalogue got, and where this process's came from."""

    total: int = 0
    """Resources the index holds now."""
    embedded: int = 0
    """Of those, how many have a vector so far; the others are scored without the dense part."""
    encoded: int = 0
    """Texts this process ran through the model, since it started."""
    from_store: int = 0
    """Vectors this process read back from the store instead, since it started."""
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"resources": self.total, "embedded": self.embedded, "encoded": self.encoded,
                               "from_store": self.from_store, "complete": self.embedded >= self.total}
        elapsed = time.monotonic() - self.started
        if self.encoded and not out["complete"] and elapsed > 0:
            rate = self.encoded / elapsed
            out |= {"texts_per_s": round(rate, 1), "eta_s": round((self.total - self.embedded) / rate, 1)}
        return out


class EmbeddingCache:
    """Vectors by text for one embedding model: from memory, else from the store, else embedded,
    then written back before use, so a replica stopped half-way keeps what it embedded."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray], model_id: str,
                 stored: StoredVectors | None = None, chunk: int = 512) -> None:
        self.encode, self.model_id, self.stored, self.chunk = encode, model_id, stored, chunk
        self.vectors: dict[str, np.ndarray] = {}
        self.progress = EmbeddingProgress()

    def __call__(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        keys = [text_hash(t) for t in texts]
        by_key = dict(zip(keys, texts, strict=True))
        wanted = [k for k in by_key if k not in self.vectors]
        read = self._read(wanted)
        missing = [k for k in wanted if k not in self.vectors]
        # Drop what the texts no longer need (old versions of changed resources): memory stays one
        # vector per text indexed.
        self.vectors = {k: self.vectors[k] for k in by_key if k in self.vectors}
        self._report(total=len(by_key), embedded=len(by_key) - len(missing))
        # Longest first and in length order: each batch pads to texts of about the same length.
        missing.sort(key=lambda k: -len(by_key[k]))
        for start in range(0, len(missing), self.chunk):
            chunk = missing[start:start + self.chunk]
            fresh = dict(zip(chunk, self.encode([by_key[k] for k in chunk]), strict=True))
            if self.stored is not None:
                self.stored.write(self.model_id, fresh)
            self.vectors.update(fresh)
            self.progress.encoded += len(fresh)
            metrics.EMBEDDING_TEXTS.labels("model").inc(len(fresh))
            self._report(total=len(by_key), embedded=self.progress.embedded + len(fresh))
            log.info("event=embedding_progress model=%s embedded=%d of=%d", self.model_id,
                     self.progress.embedded, self.progress.total)
        log.info("event=vectors_ready model=%s texts=%d from_memory=%d from_store=%d encoded=%d seconds=%.2f",
                 self.model_id, len(by_key), len(by_key) - len(wanted), read, len(missing),
                 time.perf_counter() - started)
        return np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 1), np.float32)

    def _read(self, keys: list[str]) -> int:
        if not keys or self.stored is None:
            return 0
        found = self.stored.read(self.model_id, keys)
        self.vectors.update(found)
        self.progress.from_store += len(found)
        metrics.EMBEDDING_TEXTS.labels("store").inc(len(found))
        return len(found)

    def _report(self, total: int, embedded: int) -> None:
        self.progress.total, self.progress.embedded = total, embedded
        metrics.EMBEDDING_RESOURCES.labels("total").set(total)
        metrics.EMBEDDING_RESOURCES.labels("embedded").set(embedded)


class VectorFiller:
    """Fills the vector table of the index `current()` returns, chunk by chunk, longest texts first:
    stored vectors first (one bulk read, then each chunk's keys again, in case another replica
    embedded them meanwhile), the rest embedded and written to the store before use.

    A chunk's vectors are put where the same resource with the same text sits in the index of the
    moment (under `lock`), so a catalogue change or a rebuild between the two loses nothing.
    Run in the background (`start`) for the served index, or to completion (`run`) for a version
    that must have every vector before it serves.
    """

    def __init__(self, encode: Callable[[list[str]], np.ndarray], model_id: str,
                 stored: StoredVectors | None, current: Callable[[], CatalogueIndex | None],
                 lock: threading.Lock, chunk: int = 512) -> None:
        self.encode, self.model_id, self.stored, self.chunk = encode, model_id, stored, chunk
        self.current, self.lock = current, lock
        self.progress = EmbeddingProgress()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._bulk_read = False
        self._order: tuple[CatalogueIndex, np.ndarray] | None = None
        self.publish = False
        """Whether its progress is the served champion's, shown by the metrics."""

    @property
    def started(self) -> bool:
        """Whether its background thread was started (`start`), as opposed to run to completion."""
        return self._thread is not None

    def start(self) -> VectorFiller:
        self._thread = threading.Thread(target=self._loop, name=f"vectors-{self.model_id[:12]}", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """The index changed: there may be new texts to embed."""
        self._wake.set()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.step():
                    continue
            except Exception:  # the served index stays as it is; the next change tries again
                log.exception("event=embedding_failed model=%s", self.model_id)
            self._wake.wait(30.0)
            self._wake.clear()

    def run(self) -> None:
        while self.step():
            pass

    def _missing(self, index: CatalogueIndex) -> np.ndarray:
        table = index.vectors
        assert table is not None
        present = np.zeros(len(index), dtype=bool)
        have = table.present[:len(index)]
        present[:have.size] = have
        missing = np.flatnonzero(index.live & ~present)
        self._report(index.live_count, index.live_count - missing.size)
        return missing

    def step(self) -> bool:
        """One round: False when every resource of the current index has its vector."""
        if self._stop.is_set():
            return False
        with self.lock:
            index = self.current()
        if index is None or index.vectors is None:
            return False
        missing = self._missing(index)
        if not missing.size:
            return False
        if not self._bulk_read:  # everything missing read at start, a chunk of keys at a time: a restart
            self._bulk_read = True
            for start in range(0, missing.size, READ_CHUNK):
                self._place(index, missing[start:start + READ_CHUNK], {}, from_store=True)
                self._missing(index)
            return True
        chunk = self._longest_first(index, missing)[:self.chunk]
        found = self._place(index, chunk, {}, from_store=True)
        todo = [p for p in chunk if p not in found]
        if todo:
            texts = [index.resources[p].text for p in todo]
            encoded = self.encode(texts)
            fresh = {text_hash(t): v for t, v in zip(texts, encoded, strict=True)}
            if self.stored is not None:
                self.stored.write(self.model_id, fresh)
            self.progress.encoded += len(fresh)
            metrics.EMBEDDING_TEXTS.labels("model").inc(len(fresh))
            self._place(index, np.asarray(todo), fresh, from_store=False)
        self._missing(index)
        log.info("event=embedding_progress model=%s embedded=%d of=%d", self.model_id,
                 self.progress.embedded, self.progress.total)
        return True

    def _longest_first(self, index: CatalogueIndex, missing: np.ndarray) -> np.ndarray:
        """The missing positions, longest text first: sorted once per index snapshot, not per round."""
        if self._order is None or self._order[0] is not index:
            lengths = np.fromiter((len(index.resources[p].description) for p in missing), dtype=np.int64,
                                  count=missing.size)
            self._order = (index, missing[np.argsort(-lengths, kind="stable")])
        order = self._order[1]
        wanted = np.zeros(len(index), dtype=bool)
        wanted[missing] = True
        return order[wanted[order]]

    def _place(self, index: CatalogueIndex, positions: np.ndarray, vectors: dict[str, np.ndarray],
               from_store: bool) -> set[int]:
        """Put the vectors of these positions' texts (read from the store when `from_store`) into
        the current index; returns the positions of `index` that got one."""
        texts = {int(p): index.resources[p].text for p in positions}
        keys = {p: text_hash(t) for p, t in texts.items()}
        if from_store:
            vectors = self.stored.read(self.model_id, list(set(keys.values()))) if self.stored else {}
        placed: set[int] = set()
        if not vectors:
            return placed
        with self.lock:
            now = self.current()
            if now is None or now.vectors is None:
                return placed
            targets, rows = [], []
            for p, key in keys.items():
                if key not in vectors:
                    continue
                placed.add(p)
                here = now.position.get(index.resources[p].id)
                if here is not None and now.live[here] and now.resources[here].text == texts[p]:
                    targets.append(here)
                    rows.append(vectors[key])
            if targets:
                now.vectors.put(np.asarray(targets), np.stack(rows))
        if from_store:
            self.progress.from_store += len(placed)
            metrics.EMBEDDING_TEXTS.labels("store").inc(len(placed))
        return placed

    def _report(self, total: int, embedded: int) -> None:
        self.progress.total, self.progress.embedded = total, embedded
        if self.publish:
            metrics.EMBEDDING_RESOURCES.labels("total").set(total)
            metrics.EMBEDDING_RESOURCES.labels("embedded").set(embedded)
