"""A MongoDB for the tests: SecantusDB, a MongoDB-wire-compatible server from PyPI, started like the
broker (a free loopback port, stopped by the tests), or the MongoDB that EDURANKER_TEST_MONGODB_URL
names.

SecantusDB (`secantusd-py`) comes with the dev dependencies. It is GPL-2.0 and beta: a test tool,
never in the image and never needed by `make run`. It presents itself as a one-node replica set,
so multi-document transactions work as on a production MongoDB replica set; what else the code
relies on and where it differs from MongoDB is in docs/deployment.md#mongodb.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shared.messaging.broker import die_with_parent, free_port, terminate

MONGODB_URL_ENV = "EDURANKER_TEST_MONGODB_URL"
BINARY = "secantusd-py"


def database_url(server_url: str, name: str | None = None) -> str:
    """`server_url` with its database replaced by `name` (a new, unique one by default)."""
    return urlsplit(server_url)._replace(path=f"/{name or fresh_name()}").geturl()


def fresh_name() -> str:
    return f"eduranker_test_{uuid.uuid4().hex[:12]}"


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a MongoDB server at `url` answers a ping."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    ms = int(timeout_s * 1000)
    with MongoClient(url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms) as client:
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False


@dataclass
class SecantusDB:
    """One `secantusd-py` process on a loopback port, its data in `storage` (kept across restarts)."""

    storage: Path
    host: str = "127.0.0.1"
    port: int = 0
    # Every commit fsynced. SecantusDB ignores j: true on a transaction's commit and otherwise writes
    # its journal in the background: only with this does what it acknowledged survive a kill, as on
    # a MongoDB replica set (w: majority). Slower: for a server that a test kills.
    sync_on_commit: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.storage.parent / f"{self.storage.name}.log"

    def start(self, timeout_s: float = 60.0) -> SecantusDB:
        binary = shutil.which(BINARY, path=str(Path(sys.executable).parent)) or shutil.which(BINARY)
        if binary is None:
            raise RuntimeError(f"{BINARY} is missing: SecantusDB is a dev dependency, run `make install` "
                               f"(or point {MONGODB_URL_ENV} at a MongoDB)")
        self.port = self.port or free_port(self.host)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "--host", self.host, "--port", str(self.port), "--storage-path", str(self.storage),
                 "--log-level", "WARNING", *(["--sync-on-commit"] if self.sync_on_commit else [])],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{BINARY} exited with code {self.process.returncode}; "
                                   f"see {self.log_path}")
            if answers(self.url, timeout_s=0.5) and self.process.poll() is None:
                return self  # its own answer: a restart whose port another process took fails above
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{BINARY} did not answer on {self.url} within {timeout_s}s; see {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        terminate(self.process, timeout_s)

    def kill(self) -> None:
        """As a crash would: no shutdown, whatever the server had not made durable is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> SecantusDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
