"""Loading a catalogue of resources from JSONL or CSV into the store."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from shared.store import Resource, open_store

FIELDS = ("id", "title", "description", "subject", "level", "type", "url", "language")


class CatalogueError(ValueError):
    """A catalogue line that is not a valid resource; the message names the line."""


def read_catalogue(path: Path) -> Iterator[Resource]:
    rows: Iterator[dict]
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(path.open(newline="", encoding="utf-8"))
    else:
        rows = (json.loads(line) for line in path.open(encoding="utf-8") if line.strip())
    for number, row in enumerate(rows, start=1):
        if "id" not in row and "_id" in row:  # BEIR corpus layout
            text = row.get("text") or ""
            row = {"id": row["_id"], "title": (row.get("title") or text[:80] or "untitled")[:500],
                   "description": text}
        try:
            yield Resource(**{k: v for k, v in row.items() if k in FIELDS and v not in (None, "")})
        except ValidationError as exc:
            raise CatalogueError(f"{path}:{number}: {exc.errors()[0]['msg']}") from exc


async def load_catalogue(store_url: str, path: Path, batch: int = 500) -> int:
    store = await open_store(store_url)
    try:
        resources = list(read_catalogue(path))
        for start in range(0, len(resources), batch):
            await store.upsert_resources(resources[start:start + batch])
        return len(resources)
    finally:
        await store.close()
