"""Route dependencies every FastAPI service shares: the settings it was created with and the store
its lifespan opened, handed to each route by FastAPI's `Depends` instead of module globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shared.settings import Settings
from shared.store import Store


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def app_store(request: Request) -> Store:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(app_settings)]
StoreDep = Annotated[Store, Depends(app_store)]
