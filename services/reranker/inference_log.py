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
from shared.records import Inference
from shared.store import Store, StoreUnavailableError
from shared.store.batch_writer import BatchWriter, being_cancelled

log = logging.getLogger(__name__)


class InferenceLog(BatchWriter[Inference]):
    def __init__(self, store: Store, max_batch: int = 200, drain_timeout_s: float = 30.0,
                 max_backlog: int = 10_000) -> None:
        super().__init__("inference-log", max_batch, drain_timeout_s)
        self.store = store
        self.max_backlog = max_backlog
        self._writing = 0

    def backlog(self) -> int:
        return self.queue.qsize() + self._writing

    def check_room(self) -> None:
        """Refuses a search (503) whose record could not be kept: the store has been down so long
        that `max_backlog` records wait. Memory stays bounded and no answered search goes unlogged."""
        waiting = self.backlog()
        if waiting >= self.max_backlog:
            raise StoreUnavailableError(f"{waiting} search records wait to be written, searches resume "
                                        "once the store takes them")

    def add(self, inference: Inference) -> None:
        self.queue.put_nowait(inference)
        metrics.INFERENCE_LOG_BACKLOG.set(self.queue.qsize())

    def failed(self, batch: list[Inference], exc: BaseException) -> None:
        """Never lost: queued again (inserts are idempotent)."""
        self._writing = 0
        for inference in batch:
            self.queue.put_nowait(inference)

    async def write(self, batch: list[Inference]) -> None:
        """Retries until written: inserts are idempotent (by inference id), so a retry is safe."""
        self._writing = len(batch)
        await self._write_until_stored(batch)
        self._writing = 0
        metrics.INFERENCES_LOGGED.inc(len(batch))
        metrics.INFERENCE_LOG_BACKLOG.set(self.queue.qsize())

    async def _write_until_stored(self, batch: list[Inference]) -> None:
        delay = 0.1
        while True:
            try:
                await self.store.add_inferences(batch)
                return
            except (Exception, asyncio.CancelledError) as exc:  # any failure: keep them, back off, retry
                if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                    raise
                log.warning("event=inference_log_retry batch=%d error=%r", len(batch), str(exc)[:200])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
