"""API keys: who may write feedback, change the catalogue or the model, and (by setting) search.

One key check for every service. Keys come from the settings (`EDURANKER_ADMIN_KEYS`,
`EDURANKER_FEEDBACK_KEYS`, `EDURANKER_SEARCH_KEYS`, comma-separated) and from the optional keys
file (`EDURANKER_API_KEYS_FILE`), which is read again whenever it changes on disk, so keys rotate
without a restart (a Kubernetes Secret mounted as a file). A role with no key at all is open:
the local defaults and the tests run without keys, and a service that others can reach refuses to
start with a writing role open (shared/web/exposure.py). Keys are compared in constant time and
never logged; the placeholders shipped in deploy/ (`change-me...`) are never keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Header, HTTPException, Request

from shared.settings import Settings

log = logging.getLogger(__name__)

Role = Literal["admin", "feedback", "search"]
ROLES: tuple[Role, ...] = ("admin", "feedback", "search")
HEADER = "X-API-Key"
# Keys that pass each check: an admin key passes everything, a feedback key also searches.
ACCEPTED: dict[Role, tuple[Role, ...]] = {
    "admin": ("admin",),
    "feedback": ("feedback", "admin"),
    "search": ("search", "feedback", "admin"),
}
WHAT: dict[Role, str] = {"admin": "this admin API", "feedback": "writing feedback", "search": "search"}
ARTICLE: dict[Role, str] = {"admin": "an admin", "feedback": "a feedback", "search": "a search"}


PLACEHOLDER = re.compile(r"change[-_ ]?me", re.IGNORECASE)
NEW_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the line, never a key."""


class PlaceholderKeyError(KeysFileError):
    """The keys file holds one of the placeholders shipped in deploy/."""


def is_placeholder(key: str) -> bool:
    """The shipped examples (`change-me-admin`...): anyone who read deploy/ has them."""
    return PLACEHOLDER.match(key.strip()) is not None


def split_keys(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def parse_keys_file(text: str) -> dict[Role, list[str]]:
    """JSON `{"admin": ["k1"], "feedback": "k2,k3"}` or lines `<role> <key>` (`#` starts a comment)."""
    keys: dict[Role, list[str]] = {role: [] for role in ROLES}
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeysFileError(f"not valid JSON (line {exc.lineno})") from None
        for role, value in data.items():
            if role not in keys:
                raise KeysFileError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
            items = split_keys(value) if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(k, str) for k in items):
                raise KeysFileError(f"role {role!r}: give a list of strings or a comma-separated string")
            keys[role].extend(k.strip() for k in items if k.strip())
        _refuse_placeholders(keys)
        return keys
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in keys:
            raise KeysFileError(f"line {number}: write '<role> <key>' with a role among {', '.join(ROLES)}")
        keys[parts[0]].append(parts[1])  # type: ignore[index]
    _refuse_placeholders(keys)
    return keys


def _refuse_placeholders(keys: dict[Role, list[str]]) -> None:
    for role in ROLES:
        if any(map(is_placeholder, keys[role])):
            raise PlaceholderKeyError(f"a {role} key is a placeholder (change-me...), an example published "
                                      f"with EduRanker: put a real key (a new one: {NEW_KEY})")


def _digest(key: str) -> bytes:
    """Equal-length values for the constant-time comparison, whatever the key's length."""
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The keys of each role, from the settings plus the keys file (re-read when it changes)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path: Path | None = settings.api_keys_file
        self._static: dict[Role, list[str]] = {
            "admin": split_keys(settings.admin_keys.get_secret_value()),
            "feedback": split_keys(settings.feedback_keys.get_secret_value()),
            "search": split_keys(settings.search_keys.get_secret_value()),
        }
        self._from_file: dict[Role, list[str]] = {role: [] for role in ROLES}
        self._file_stamp: tuple[int, int, int] | None = None
        self._file_loaded = False
        self._lock = threading.Lock()
        self._digests: dict[Role, list[bytes]] = {}
        self._rebuild()

    def _rebuild(self) -> None:
        self._digests = {role: [_digest(k) for k in self._static[role] + self._from_file[role]]
                         for role in ROLES}

    def refresh(self) -> None:
        """Reads the keys file again if its modification time, size or inode changed."""
        if self.path is None:
            return
        try:
            info = os.stat(self.path)  # follows the symlinks of a mounted Secret
        except OSError as exc:
            if self._file_stamp != (0, 0, 0):  # once per outage, not once per request
                log.error("event=api_keys_file_unreadable path=%s error=%s", self.path, exc.strerror)
            self._file_stamp = (0, 0, 0)
            return
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self._file_stamp:
            return
        with self._lock:
            if stamp == self._file_stamp:
                return
            self._file_stamp = stamp
            try:
                keys = parse_keys_file(self.path.read_text())
            except (OSError, UnicodeDecodeError, KeysFileError) as exc:
                # The last good keys stay in force: a half-written file must not open the API.
                log.error("event=api_keys_file_rejected path=%s error=%s", self.path, exc)
                return
            self._from_file = keys
            self._file_loaded = True
            self._rebuild()
            log.info("event=api_keys_loaded path=%s %s", self.path,
                     " ".join(f"{role}={len(keys[role])}" for role in ROLES))

    def count(self, role: Role) -> int:
        return len(self._digests[role])

    def required(self, role: Role) -> bool:
        """Search needs a key only by setting; the other roles as soon as one of their keys exists."""
        if role == "search":
            return self.settings.search_requires_key
        return bool(self._digests[role]) or (self.path is not None and not self._file_loaded)

    def matches(self, given: str, roles: Iterable[Role]) -> bool:
        """Constant time over every candidate key: no early exit that timing could reveal."""
        wanted = _digest(given)
        found = False
        for role in roles:
            for digest in self._digests[role]:
                found |= hmac.compare_digest(wanted, digest)
        return found

    def check(self, role: Role, given: str | None) -> None:
        """Returns when the call may go on; 401 without a key, 403 with one that does not fit."""
        self.refresh()
        if not self.required(role):
            return
        if self.path is not None and not self._file_loaded:
            raise HTTPException(503, f"the API keys file {self.path} cannot be read yet, so {WHAT[role]} "
                                     "is refused: fix the file (see the service log)",
                                headers={"Retry-After": "5"})
        if not given:
            log.warning("event=api_key_refused role=%s reason=missing", role)
            raise HTTPException(401, f"{WHAT[role]} needs a key: send it in the {HEADER} header",
                                headers={"WWW-Authenticate": HEADER})
        if not self.matches(given, ACCEPTED[role]):
            log.warning("event=api_key_refused role=%s reason=wrong", role)
            setting = f"EDURANKER_{role.upper()}_KEYS"
            raise HTTPException(403, f"the {HEADER} given is not {ARTICLE[role]} key ({setting} or the "
                                     "keys file): check the key, or ask for one with this role")


def keyring(app: FastAPI) -> KeyRing:
    """The app's key ring, made on first use from `app.state.settings`."""
    ring = getattr(app.state, "keyring", None)
    if ring is None:
        ring = app.state.keyring = KeyRing(app.state.settings)
    return ring


def require_key(role: Role) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that lets a call through only with a key of `role` (or when it is open)."""

    async def check(request: Request,
                    x_api_key: str | None = Header(default=None, description="The caller's API key")) -> None:
        keyring(request.app).check(role, x_api_key)

    check.__name__ = f"require_{role}"
    return check


require_admin = require_key("admin")
require_feedback = require_key("feedback")
require_search = require_key("search")
