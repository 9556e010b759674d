"""The catalogue's part of the store: resources, their state, and their vectors by embedding model
identity and text hash (shared/ml/runtime/vectors.py).

A resource is live (searched, rated, trained on), hidden (kept, out of all that until it is shown
again) or removed (deleted; its id stays as a tombstone with the moment of removal, so that every
replica reads the removal as it reads any other change).
"""

from __future__ import annotations

import abc
from datetime import datetime

import numpy as np

from shared.records import Resource
from shared.vocab import ResourceState


class CatalogueStore(abc.ABC):
    """Resources and their vectors."""

    @abc.abstractmethod
    async def upsert_resources(self, resources: list[Resource]) -> int:
        """Adds or replaces resources by id: a removed id comes back live, a hidden one stays hidden."""

    @abc.abstractmethod
    async def get_resources(self, ids: list[str]) -> dict[str, Resource]:
        """The live resources of these ids."""

    @abc.abstractmethod
    async def list_resources(self) -> list[Resource]:
        """The live catalogue, by id: what is searched and trained on."""

    @abc.abstractmethod
    async def resource_ids(self) -> list[str]:
        """The ids of every resource not removed, live or hidden."""

    @abc.abstractmethod
    async def resource_states(self, ids: list[str]) -> dict[str, ResourceState]:
        """The state of each of these ids the store knows (removed ones included)."""

    @abc.abstractmethod
    async def set_hidden(self, ids: list[str], hidden: bool) -> int:
        """Hides live resources (or shows hidden ones again); returns how many changed."""

    @abc.abstractmethod
    async def remove_resources(self, ids: list[str]) -> int:
        """Deletes these resources (live or hidden) and their texts' stored vectors, keeping a
        tombstone of each; returns how many were removed."""

    @abc.abstractmethod
    async def resources_since(self, after: datetime) -> list[Resource]:
        """Live resources added, updated or shown again at or after `after` (by the writer's clock):
        a replica follows the catalogue by reading these, not the whole catalogue again."""

    @abc.abstractmethod
    async def withdrawn_since(self, after: datetime) -> list[str]:
        """Ids of the resources hidden or removed at or after `after`: replicas stop serving them."""

    @abc.abstractmethod
    async def resources_version(self) -> str:
        """Changes whenever a resource is added, updated, hidden, shown or removed; replicas poll it."""

    @abc.abstractmethod
    async def get_vectors(self, model_id: str, text_hashes: list[str]) -> dict[str, np.ndarray]:
        """The stored float32 vectors of these texts for this model; texts without one are left out."""

    @abc.abstractmethod
    async def put_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        """Stores vectors by text hash; the first one stored for a key stays, so replicas that embed
        the same text at once keep agreeing on its vector."""

    @abc.abstractmethod
    async def count_vectors(self, model_id: str) -> int:
        """Vectors stored for this model."""
