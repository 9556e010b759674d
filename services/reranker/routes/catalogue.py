"""The catalogue: add or update resources, remove or hide them (admin), read one back.

Each write goes to the store, then this replica applies it at once; the others follow within
seconds (services/reranker/catalogue_follower.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from services.reranker.deps import CatalogueDep
from shared.records import Identifier, NewResource, Resource
from shared.vocab import ResourceState
from shared.web.auth import require_admin
from shared.web.deps import StoreDep
from shared.web.http import RequestBody

router = APIRouter()


class ResourceBatch(RequestBody):
    resources: list[NewResource] = Field(min_length=1, max_length=1000)


class StateChange(BaseModel):
    resource_id: str
    state: ResourceState
    changed: bool = Field(description="False when it already was in this state.")


@router.post("/api/resources", tags=["catalogue"], dependencies=[Depends(require_admin)])
async def upsert_resources(body: ResourceBatch, store: StoreDep, catalogue: CatalogueDep) -> dict:
    """Adds or updates resources by id; the search index follows without a restart. A hidden
    resource stays hidden; a removed id comes back as a new resource."""
    ids = [r.id for r in body.resources]
    if len(set(ids)) != len(ids):
        raise HTTPException(422, "resource ids must be unique within one batch")
    count = await store.upsert_resources(body.resources)
    await catalogue.refresh()
    return {"upserted": count}


async def known_state(store: StoreDep, resource_id: str) -> ResourceState:
    """The resource's state; 404 where it was never added or was removed."""
    state = (await store.resource_states([resource_id])).get(resource_id)
    if state is None:
        raise HTTPException(404, f"resource {resource_id!r} not found")
    if state == "removed":
        raise HTTPException(404, f"resource {resource_id!r} was removed: add it again to bring it back")
    return state


@router.delete("/api/resources/{resource_id}", response_model=StateChange, tags=["catalogue"],
               dependencies=[Depends(require_admin)])
async def remove_resource(resource_id: Identifier, store: StoreDep, catalogue: CatalogueDep) -> StateChange:
    """Deletes a resource: never shown again, its stored vectors dropped, feedback on it refused
    (410); every replica follows within seconds. Not reversible: hide it instead to keep it."""
    await known_state(store, resource_id)
    changed = await store.remove_resources([resource_id]) == 1
    await catalogue.refresh()
    return StateChange(resource_id=resource_id, state="removed", changed=changed)


async def set_hidden(resource_id: str, hidden: bool, store: StoreDep, catalogue: CatalogueDep) -> StateChange:
    await known_state(store, resource_id)
    changed = await store.set_hidden([resource_id], hidden) == 1
    await catalogue.refresh()
    return StateChange(resource_id=resource_id, state="hidden" if hidden else "live", changed=changed)


@router.post("/api/resources/{resource_id}/hide", response_model=StateChange, tags=["catalogue"],
             dependencies=[Depends(require_admin)])
async def hide_resource(resource_id: Identifier, store: StoreDep, catalogue: CatalogueDep) -> StateChange:
    """Takes a resource out of search, feedback (410) and training, keeping it (and its vectors)
    until `unhide`; every replica follows within seconds."""
    return await set_hidden(resource_id, True, store, catalogue)


@router.post("/api/resources/{resource_id}/unhide", response_model=StateChange, tags=["catalogue"],
             dependencies=[Depends(require_admin)])
async def unhide_resource(resource_id: Identifier, store: StoreDep, catalogue: CatalogueDep) -> StateChange:
    """Shows a hidden resource again, as it was."""
    return await set_hidden(resource_id, False, store, catalogue)


@router.get("/api/resources/{resource_id}", response_model=Resource, tags=["catalogue"])
async def get_resource(resource_id: Identifier, store: StoreDep) -> Resource:
    """A live resource; a hidden one is out of every public answer until it is shown again."""
    if await known_state(store, resource_id) == "hidden":
        raise HTTPException(404, f"resource {resource_id!r} is hidden: unhide it to read it")
    found = await store.get_resources([resource_id])
    if resource_id not in found:  # removed in between
        raise HTTPException(404, f"resource {resource_id!r} not found")
    return found[resource_id]
