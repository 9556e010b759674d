"""Store access: `open_store(url)` picks the backend from the URL scheme; `store_from(settings)`
opens the configured one, with every setting its backend reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shared.store.interface import Store, StoreUnavailableError

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["Store", "StoreUnavailableError", "checked_store_url", "make_store", "open_store", "store_from"]

SCHEMES = ("sqlite:///", "mongodb://", "mongodb+srv://")


def checked_store_url(url: str) -> str:
    """`url` if a backend takes its scheme; else why not, without the rest of it (it may hold a
    password)."""
    if not url.startswith(SCHEMES):
        scheme = url.split("://", 1)[0] + "://" if "://" in url else url[:12]
        raise ValueError(f"unsupported store URL (it starts {scheme!r}): use sqlite:///PATH or "
                         "mongodb://HOST/DB")
    return url


def make_store(url: str, tls_ca_file: Path | None = None) -> Store:
    """The backend for `url`'s scheme, not opened yet; `tls_ca_file`: a private CA for MongoDB's TLS."""
    if checked_store_url(url).startswith("sqlite:///"):
        from shared.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    from shared.store.mongo import MongoStore

    return MongoStore(url, tls_ca_file=tls_ca_file)


async def open_store(url: str, tls_ca_file: Path | None = None) -> Store:
    """Open and initialise the store at `url` (tests, tools); services use `store_from`."""
    store = make_store(url, tls_ca_file)
    await store.init()
    return store


async def store_from(settings: Settings) -> Store:
    """The store a service is configured for (`EDURANKER_STORE_URL`, `EDURANKER_MONGO_TLS_CA_FILE`)."""
    return await open_store(settings.store_url, settings.mongo_tls_ca_file)
