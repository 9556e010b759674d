"""Route dependencies of the reranker: what its lifespan made (the model holder, the inference log,
the catalogue follower), handed to each route by FastAPI's `Depends` instead of module globals.
The settings and the store every service shares come from `shared.web.deps`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request

from services.reranker.catalogue_follower import CatalogueFollower
from services.reranker.holder import ModelHolder
from services.reranker.inference_log import InferenceLog


def loaded_holder(app: FastAPI) -> ModelHolder | None:
    """The holder once a model serves; None while the service starts (for readiness and status)."""
    holder: ModelHolder | None = getattr(app.state, "holder", None)
    return holder if holder is not None and holder.ready else None


async def served_holder(request: Request) -> ModelHolder:
    holder = loaded_holder(request.app)
    if holder is None:
        raise HTTPException(503, "the model is still loading, retry in a few seconds")
    return holder


async def inference_log(request: Request) -> InferenceLog:
    return request.app.state.inference_log


async def catalogue_follower(request: Request) -> CatalogueFollower:
    return request.app.state.catalogue


HolderDep = Annotated[ModelHolder, Depends(served_holder)]
InferenceLogDep = Annotated[InferenceLog, Depends(inference_log)]
CatalogueDep = Annotated[CatalogueFollower, Depends(catalogue_follower)]
