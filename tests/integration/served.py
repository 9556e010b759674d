"""Any service's FastAPI app served by uvicorn in a thread on a free loopback port: real HTTP."""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback

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
        assert not self.thread.is_alive(), f"{self.name} did not shut down: {self._stuck()}"

    def _stuck(self) -> str:
        """Where a service that does not stop is: its open connections and request tasks (graceful
        shutdown waits for them), and its thread's stack (a lifespan step that does not return)."""
        state = self.server.server_state
        frame = sys._current_frames().get(self.thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)[-12:]) if frame is not None else "(no frame)"
        waiting = []
        try:  # read from another thread: a diagnosis, not an operation
            for task in asyncio.all_tasks(self.server.servers[0].get_loop()) if self.server.servers else ():
                waiting.append(f"{task.get_name()} awaiting in {awaiting(task.get_coro())}")
        except RuntimeError as exc:
            waiting.append(f"(tasks unreadable: {exc})")
        return (f"{len(state.connections)} connections, {len(state.tasks)} request tasks; "
                f"tasks: {waiting}; thread stack:\n{stack}")


def awaiting(coro: object) -> str:
    """Where a task waits: its innermost coroutines, function and line (through an async context
    manager's generator too: a lifespan's steps)."""
    chain = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        chain.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        inner = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        if getattr(inner, "cr_frame", None) is None and getattr(inner, "ag_frame", None) is None:
            inner = getattr(frame.f_locals.get("self"), "gen", None)  # contextlib's async manager
        coro = inner
    return " > ".join(chain[-4:]) or repr(coro)
