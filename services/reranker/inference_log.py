"""Inference logging in the background: searches return before their record is written.

Records are batched; a failed write is retried with backoff, and a clean shutdown drains
the queue, so no record is lost unless the process is killed.
"""

from __future__ import annotations

import asyncio
import logging

from shared import metrics
from shared.store import Inference, Store, StoreUnavailableError

log = logging.getLogger(__name__)


class InferenceLog:
    def __init__(self, store: Store, max_batch: int = 200) -> None:
        self.store = store
        self.max_batch = max_batch
        self.queue: asyncio.Queue[Inference] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

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
        await self.flushed()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            while True:
                try:
                    await self.store.add_inferences(batch)
                    break
                except StoreUnavailableError as exc:
                    log.warning("event=inference_log_retry batch=%d error=%s", len(batch), exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            delay = 0.1
            metrics.INFERENCES_LOGGED.inc(len(batch))
            metrics.INFERENCE_LOG_BACKLOG.set(self.queue.qsize())
            if self.queue.empty():
                self._idle.set()
