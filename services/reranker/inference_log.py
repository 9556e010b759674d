"""Inference logging in the background: searches return before their record is written.

Records are written in batches (whatever queued up while the previous write ran, up to
`max_batch`); a failed write is retried with backoff, and a clean shutdown drains the
queue, so no record is lost unless the process is killed or the store stays down for
the whole drain deadline (then the count left behind is logged as an error). While the store
is down, records wait in memory up to a bound; past it, searches are refused with a 503.
"""

from __future__ import annotations

import asyncio
import logging

from shared import metrics
from shared.store import Inference, Store, StoreUnavailableError

log = logging.getLogger(__name__)


class InferenceLog:
    def __init__(self, store: Store, max_batch: int = 200, drain_timeout_s: float = 30.0,
                 max_backlog: int = 10_000) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self.drain_timeout_s = drain_timeout_s
        self.queue: asyncio.Queue[Inference] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._writing = 0

    def check_room(self) -> None:
        """Refuses a search (503) whose record could not be kept: the store has been down so long
        that `max_backlog` records wait. Memory stays bounded and no answered search goes unlogged."""
        waiting = self.queue.qsize() + self._writing
        if waiting >= self.max_backlog:
            raise StoreUnavailableError(f"{waiting} search records wait to be written, searches resume "
                                        "once the store takes them")

    def add(self, inference: Inference) -> None:
        self._idle.clear()
        self.queue.put_nowait(inference)
        metrics.INFERENCE_LOG_BACKLOG.set(self.queue.qsize())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inference-log")

    async def flushed(self) -> None:
        """Wait until everything queued so far is in the store."""
        await self._idle.wait()

    async def close(self) -> None:
        """Drain what is queued (bounded by `drain_timeout_s`), then stop the writer."""
        try:
            await asyncio.wait_for(self.flushed(), self.drain_timeout_s)
        except TimeoutError:
            log.error("event=inference_log_lost records=%d reason=store_unavailable_at_shutdown",
                      self.queue.qsize() + self._writing)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._writing = len(batch)
            await self._write(batch)
            self._writing = 0
            metrics.INFERENCES_LOGGED.inc(len(batch))
            metrics.INFERENCE_LOG_BACKLOG.set(self.queue.qsize())
            if self.queue.empty():
                self._idle.set()

    async def _write(self, batch: list[Inference]) -> None:
        """Retries until written: inserts are idempotent (by inference id), so a retry is safe."""
        delay = 0.1
        while True:
            try:
                await self.store.add_inferences(batch)
                return
            except Exception as exc:  # any failure: keep the records, back off, retry
                log.warning("event=inference_log_retry batch=%d error=%r", len(batch), str(exc)[:200])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
