"""Store access: `open_store(url)` picks the backend from the URL scheme."""

from __future__ import annotations

from shared.store.base import (
    Experiment,
    Feedback,
    FeedbackOutcome,
    Inference,
    InterleavingRecord,
    ModelVersion,
    OutboxEntry,
    Resource,
    ShownResult,
    Store,
    StoreUnavailableError,
    TrainingRun,
)

__all__ = [
    "Experiment", "Feedback", "FeedbackOutcome", "Inference", "InterleavingRecord", "ModelVersion",
    "OutboxEntry", "Resource", "ShownResult", "Store", "StoreUnavailableError", "TrainingRun", "open_store",
]


async def open_store(url: str) -> Store:
    """Open and initialise the store named by `EDURANKER_STORE_URL`."""
    if url.startswith("sqlite:///"):
        from shared.store.sqlite import SQLiteStore

        store: Store = SQLiteStore.from_url(url)
    elif url.startswith(("mongodb://", "mongodb+srv://")):
        from shared.store.mongo import MongoStore

        store = MongoStore.from_url(url)
    else:
        raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or mongodb://HOST/DB")
    await store.init()
    return store
