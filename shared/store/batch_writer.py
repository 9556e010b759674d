"""A background task that writes queued items in groups: whatever queued up while the previous write
ran, up to `max_batch` (the last item taken may go over), is written together and in order (a group
commit).

The reranker's inference log and the collector's feedback writer are two of them; each says how
a batch is written and what a failure does (the first retries until the store takes it, the
second hands each request's outcomes to its caller).

The task outlives whatever a write raises. A writer that died would leave every later item queued
and its callers waiting, with the service still saying it is ready, and its shutdown waiting on the
queue forever: the store's drivers are async, and an async driver may end its own work on a lost
server with a `CancelledError` that is not the writer's own cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def being_cancelled() -> bool:
    """Whether the running task was asked to stop (`Task.cancel`). A `CancelledError` raised when it
    was not came out of a library cancelling its own work: a failure like any other, not a stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class BatchWriter(Generic[T]):
    def __init__(self, name: str, max_batch: int, drain_timeout_s: float = 30.0) -> None:
        self.name = name
        self.max_batch = max_batch
        self.drain_timeout_s = drain_timeout_s
        self.queue: asyncio.Queue[T] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def size(self, item: T) -> int:
        """How much of `max_batch` an item takes: one, unless a subclass queues groups of things."""
        return 1

    async def write(self, batch: list[T]) -> None:
        """Writes one batch; what it raises goes to `failed`, and the writer goes on."""
        raise NotImplementedError

    def failed(self, batch: list[T], exc: BaseException) -> None:
        """What becomes of a batch whose write raised: a subclass keeps it or tells its callers."""

    def backlog(self) -> int:
        """Items not written yet."""
        return self.queue.qsize()

    async def flushed(self) -> None:
        """Wait until everything queued so far is written."""
        await self.queue.join()

    async def close(self) -> None:
        """Writes what is queued, for at most `drain_timeout_s` (a store that stays away must not hold
        a shutdown), then stops; what is left is logged."""
        try:
            await asyncio.wait_for(self.flushed(), self.drain_timeout_s)
        except TimeoutError:
            log.error("event=writer_left_items writer=%s items=%d reason=store_unavailable_at_shutdown",
                      self.name, self.backlog())
        await self.stop()

    async def stop(self) -> None:
        """Stops the task; what is still queued is not written (`close` drains first)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            size = self.size(batch[0])
            while size < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
                size += self.size(batch[-1])
            try:
                await self.write(batch)
            except asyncio.CancelledError as exc:
                if being_cancelled():
                    raise
                log.error("event=writer_interrupted writer=%s size=%d: the store's driver cancelled the "
                          "write; the writer goes on", self.name, size)
                self.failed(batch, exc)
            except Exception as exc:  # noqa: BLE001 - `failed` decides; the writer must go on
                log.warning("event=write_failed writer=%s size=%d error=%r", self.name, size, exc)
                self.failed(batch, exc)
            finally:
                for _ in batch:
                    self.queue.task_done()
