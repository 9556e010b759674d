"""Following the store's catalogue: read whole once, then only what changed.

A replica reads the resources written since its last read (with a margin, so a write that
committed late is read again; applying an unchanged resource changes nothing), and the ids hidden
or removed since, and hands both to the served indexes, which search the first at once in their
delta and never match the others again. Nothing re-reads or re-indexes the whole catalogue after
start.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from services.reranker.indexes import ServedIndexes
from shared.records import Resource, utcnow
from shared.store import Store

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OVERLAP = timedelta(seconds=10)
"""How far back each read starts before the previous one began: longer than a write takes to commit
(and than the writers' clocks differ). Short, because what it re-reads is compared again: a whole
catalogue loaded just before a start is re-read once by the first update."""


class CatalogueFollower:
    def __init__(self, store: Store, indexes: ServedIndexes) -> None:
        self.store, self.indexes = store, indexes
        self.version = ""
        self.since: datetime | None = None
        self._lock = asyncio.Lock()

    async def read_all(self) -> list[Resource]:
        started = utcnow()
        self.version = await self.store.resources_version()
        resources = await self.store.list_resources()
        self.since = started - OVERLAP
        return resources

    async def refresh(self) -> int:
        """Apply what changed since the last read; returns how many resources it touched."""
        async with self._lock:
            started = utcnow()
            version = await self.store.resources_version()
            changed = await self.store.resources_since(self.since or EPOCH)
            withdrawn = await self.store.withdrawn_since(self.since or EPOCH)
            touched = await self.indexes.apply_changes(changed, withdrawn)
            self.version, self.since = version, started - OVERLAP
            return touched

    async def refresh_if_changed(self) -> None:
        if await self.store.resources_version() != self.version:
            await self.refresh()
