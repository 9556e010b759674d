"""Fixtures the integration tests share: a real headless Chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.debian import debian_program

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> str:
    return debian_program("chromium", "chromium", "chromium-browser")


@contextmanager
def chromium_context(chromium: str, profile: Path) -> Iterator[Any]:
    """A browser context; Playwright's sync API runs an event loop in this thread while it is open,
    so a test that also calls asyncio.run opens it only where it needs the page."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is a dev dependency: run `make install`")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Any]:
    with chromium_context(chromium, tmp_path / "profile") as context:
        yield context
