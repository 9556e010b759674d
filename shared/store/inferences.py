"""The inference log's part of the store: every search answered, as it was shown."""

from __future__ import annotations

import abc

from shared.records import Inference


class InferenceStore(abc.ABC):
    """Inferences, written by the rerankers, read by the collector and the trainer."""

    @abc.abstractmethod
    async def add_inferences(self, inferences: list[Inference]) -> None: ...

    @abc.abstractmethod
    async def get_inference(self, inference_id: str) -> Inference | None: ...

    @abc.abstractmethod
    async def get_inferences(self, ids: list[str]) -> dict[str, Inference]: ...

    @abc.abstractmethod
    async def count_inferences(self) -> dict[str, int]:
        """Inferences per model version."""

    @abc.abstractmethod
    async def recent_inferences(self, limit: int) -> list[Inference]:
        """The newest `limit` inferences, newest first: the traffic the click model and the
        evidence read (what was shown, to whom, at which rank)."""
