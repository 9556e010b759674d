"""A background task that writes queued items in groups: whatever queued up while the previous write
ran, up to `max_batch` (the last item taken may go over), is written together and in order (a group
commit).

The reranker's inference log and the collector's feedback writer are two of them; each says how
a batch is written and what a failure does (the first retries until the store takes it, the
second hands each request's outcomes to its caller).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchWriter(Generic[T]):
    def __init__(self, name: str, max_batch: int) -> None:
        self.name = name
        self.max_batch = max_batch
        self.queue: asyncio.Queue[T] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def size(self, item: T) -> int:
        """How much of `max_batch` an item takes: one, unless a subclass queues groups of things."""
        return 1

    async def write(self, batch: list[T]) -> None:
        """Writes one batch. It must not raise: the writer would stop with it."""
        raise NotImplementedError

    async def flushed(self) -> None:
        """Wait until everything queued so far is written."""
        await self.queue.join()

    async def stop(self) -> None:
        """Stops the task; what is still queued is not written (a subclass's `close` drains first)."""
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
            finally:
                for _ in batch:
                    self.queue.task_done()
