"""The store interface: the system of record for resources, inferences, feedback, runs, models.

Split by kind of data, one interface each (`catalogue.py`, `inferences.py`, `feedback.py`,
`models.py`); a backend (SQLite embedded, MongoDB in production) implements them all and passes
the same contract tests (`tests/integration/test_store_contract.py`).
"""

from __future__ import annotations

import abc

from shared.store.catalogue import CatalogueStore
from shared.store.feedback import FeedbackStore
from shared.store.inferences import InferenceStore
from shared.store.models import ModelStore


class StoreUnavailableError(RuntimeError):
    """The store did not answer in time; HTTP services turn this into a 503."""


class Store(CatalogueStore, InferenceStore, FeedbackStore, ModelStore, abc.ABC):
    """Async access to EduRanker's records. Every method may raise `StoreUnavailableError`."""

    @abc.abstractmethod
    async def init(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None: ...
