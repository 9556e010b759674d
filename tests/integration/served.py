"""Any service's FastAPI app served by uvicorn in a thread on a free loopback port: real HTTP."""

from __future__ import annotations

import threading

import httpx
import uvicorn
from fastapi import FastAPI

from tools.localstack import wait_for


class Served:
    """Starts on `__enter__`, returns once `/ready` answers 200; stops (lifespan included) on exit."""

    def __init__(self, app: FastAPI, port: int, name: str = "service", ready_timeout_s: float = 120) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        self.ready_timeout_s = ready_timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name=f"{name}-under-test", daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), self.ready_timeout_s, 0.1,
                 f"{self.name} to start")
        assert self.server.started, f"{self.name} failed to start; see the log above"

        def ready() -> bool:
            try:
                return httpx.get(self.url + "/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, self.ready_timeout_s, 0.2, f"{self.name} /ready")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), f"{self.name} did not shut down"
