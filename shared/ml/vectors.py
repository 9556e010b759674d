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
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from shared import metrics
from shared.store import Store, StoreUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


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


@dataclass
class EmbeddingProgress:
    """How far the last index build got, and where this process's vectors came from."""

    total: int = 0
    """Distinct texts the last index needs."""
    embedded: int = 0
    """Of those, how many have a vector so far."""
    encoded: int = 0
    """Texts this process ran through the model, since it started."""
    from_store: int = 0
    """Vectors this process read back from the store instead, since it started."""

    def as_dict(self) -> dict[str, int]:
        return {"resources": self.total, "embedded": self.embedded, "encoded": self.encoded,
                "from_store": self.from_store}


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
            self._write(fresh)
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
        try:
            found = self.stored.get(self.model_id, keys)
        except StoreUnavailableError as exc:  # the texts are embedded here instead: slower, still served
            log.warning("event=vectors_read_failed model=%s error=%s", self.model_id, exc)
            return 0
        self.vectors.update(found)
        self.progress.from_store += len(found)
        metrics.EMBEDDING_TEXTS.labels("store").inc(len(found))
        return len(found)

    def _write(self, vectors: dict[str, np.ndarray]) -> None:
        if self.stored is None:
            return
        try:
            self.stored.put(self.model_id, vectors)
        except StoreUnavailableError as exc:  # kept in memory; the next start embeds them again
            log.warning("event=vectors_write_failed model=%s count=%d error=%s", self.model_id,
                        len(vectors), exc)

    def _report(self, total: int, embedded: int) -> None:
        self.progress.total, self.progress.embedded = total, embedded
        metrics.EMBEDDING_RESOURCES.labels("total").set(total)
        metrics.EMBEDDING_RESOURCES.labels("embedded").set(embedded)
