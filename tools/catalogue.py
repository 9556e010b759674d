"""Loading a catalogue of resources from JSONL or CSV into the store, added to it or replacing it.

Columns beyond a resource's own (`FIELDS`) are kept in its `fields` when they hold text or a
number: the catalogue's own fields, filterable where EDURANKER_FILTER_FIELDS names them.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from shared.records import DESCRIPTION_MAX_CHARS, TITLE_MAX_CHARS, NewResource, Resource
from shared.store import open_store
from tools.collection import json_object

LIMITS = {"title": TITLE_MAX_CHARS, "description": DESCRIPTION_MAX_CHARS}
FIELDS = ("id", "title", "description", "subject", "level", "type", "url", "language")
REMOVE_BATCH = 1000


log = logging.getLogger(__name__)


class CatalogueError(ValueError):
    """A catalogue line that is not a valid resource; the message names the line."""


def read_catalogue(path: Path) -> Iterator[Resource]:
    """Resources in file order; the first line that is not one stops the read with a
    `CatalogueError` naming the file and line, so nothing half-read is loaded."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")  # a spreadsheet's BOM is no field
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read the catalogue ({exc.strerror})") from exc
    with handle:
        number, cut, first, again = 0, Counter[str](), dict[str, int](), dict[str, int]()
        try:
            if path.suffix.lower() == ".csv":
                header = handle.readline()
                delimiter = max(",;\t", key=header.count)  # spreadsheets in many locales write ";"
                names = next(csv.reader([header], delimiter=delimiter), [])
                reader = csv.DictReader(handle, fieldnames=[n.strip().lower() for n in names],
                                        delimiter=delimiter)
                for row in reader:
                    number = reader.line_num + 1
                    yield _once(number, _resource(path, number, row, cut), first, again)
            else:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        resource = _resource(path, number, _row(path, number, line), cut)
                        yield _once(number, resource, first, again)
        except UnicodeDecodeError as exc:
            where = f", somewhere after line {number}" if number else ""
            raise CatalogueError(f"{path}: not UTF-8 text ({exc.reason}{where}); "
                                 "save the catalogue as UTF-8") from exc
        except csv.Error as exc:
            raise CatalogueError(f"{path}:{number + 1}: not valid CSV ({exc})") from exc
        if again:
            one = next(iter(again))
            log.warning("event=catalogue_ids_repeated path=%s ids=%d e.g. id=%r lines=%d,%d: the last line "
                        "wins", path, len(again), one, first[one], again[one])
        for field, count in cut.items():
            log.warning("event=catalogue_field_cut path=%s field=%s resources=%d max_chars=%d", path, field,
                        count, LIMITS[field])


def _once(number: int, resource: Resource, first: dict[str, int], again: dict[str, int]) -> Resource:
    """Notes where each id first appears and appears again: a later line replaces the earlier one (the
    last wins), said in one warning at the end, two resources under one id being as often a mistake
    as an update."""
    if first.setdefault(resource.id, number) != number:
        again.setdefault(resource.id, number)
    return resource


def _row(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        return json_object(path, number, line)
    except ValueError as exc:
        raise CatalogueError(str(exc)) from exc


def _resource(path: Path, number: int, row: dict[str, Any], cut: Counter[str]) -> Resource:
    if "id" not in row and "_id" in row:  # BEIR corpus layout
        text = row.get("text") or ""
        title = row.get("title") or (text[:80] if isinstance(text, str) else "") or "untitled"
        row = {"id": row["_id"], "title": title, "description": text}
    for field, limit in LIMITS.items():  # the rankers read far less; a long text is no bad line
        if isinstance(row.get(field), str) and len(row[field]) > limit:
            row = {**row, field: row[field][:limit]}
            cut[field] += 1
    if isinstance(row.get("id"), int) and not isinstance(row["id"], bool):
        row = {**row, "id": str(row["id"])}  # numbered catalogues: 7 and "7" are the same resource
    own = {k: v for k, v in row.items() if k in FIELDS and v not in (None, "")}
    extra = row.get("fields") if isinstance(row.get("fields"), dict) else {}
    extra = {**extra, **{k: v for k, v in row.items() if k not in FIELDS and k != "fields"}}
    kept = {str(k): _text(v) for k, v in extra.items() if _text(v)}
    try:
        return NewResource(**own, fields=kept)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "resource"
        raise CatalogueError(f"{path}:{number}: {field}: {error['msg']}") from exc


def _text(value: Any) -> str:
    """A further field's value as text; "" for what is not one value (a list, an object, nothing)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value).strip()
    return ""


def distinct(resources: Iterable[Resource]) -> list[Resource]:
    """One resource per id, the last line's, in the order ids first appear."""
    return list({r.id: r for r in resources}.values())


class Loaded(NamedTuple):
    loaded: int
    removed: int


async def load_catalogue(store_url: str, path: Path, batch: int = 500, replace: bool = False) -> Loaded:
    """Adds or updates the file's resources; with `replace`, also removes every resource the file
    does not have, so that the catalogue is exactly the file (hidden ones it has stay hidden)."""
    resources = distinct(read_catalogue(path))
    if replace and not resources:
        raise CatalogueError(f"{path}: no resource in it: --replace would remove the whole catalogue")
    store = await open_store(store_url)
    try:
        for start in range(0, len(resources), batch):
            await store.upsert_resources(resources[start:start + batch])
        removed = 0
        if replace:
            keep = {r.id for r in resources}
            gone = [i for i in await store.resource_ids() if i not in keep]
            for start in range(0, len(gone), REMOVE_BATCH):
                removed += await store.remove_resources(gone[start:start + REMOVE_BATCH])
        return Loaded(len(resources), removed)
    finally:
        await store.close()
