"""The model registry on disk: one folder per version, written atomically, `current` → champion.

Every change is one rename, so a process killed at any point leaves either the old or the new
state plus `.tmp-*` leftovers, which `clean_partial` removes on the next start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^v(\d{4,})$")
CHAMPION_LINK = "current"
METADATA_FILE = "training_metadata.json"


class RegistryError(ValueError):
    """A location outside the registry, or a version that is not there."""


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def ensure(self) -> Registry:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def versions(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()
                      and VERSION_RE.match(p.name))

    def next_version(self) -> str:
        numbers = [int(VERSION_RE.match(v).group(1)) for v in self.versions()]  # type: ignore[union-attr]
        return f"v{max(numbers, default=0) + 1:04d}"

    def resolve(self, location: str) -> Path:
        """A version folder from an event's location; never a path outside the registry root."""
        if not location or "\x00" in location:
            raise RegistryError("empty location")
        path = (self.root / location).resolve()
        if path.parent != self.root or not VERSION_RE.match(path.name):
            raise RegistryError(f"location {location!r} is not a version folder of the registry")
        if not path.is_dir():
            raise RegistryError(f"version {path.name} does not exist in the registry")
        return path

    def write_version(self, version: str, write: Callable[[Path], None]) -> Path:
        """`write` fills a temporary folder that is renamed into place only when complete."""
        if not VERSION_RE.match(version):
            raise RegistryError(f"bad version name {version!r}")
        self.ensure()
        final = self.root / version
        if final.exists():
            raise RegistryError(f"version {version} already exists")
        tmp = self.root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            write(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("event=version_written version=%s path=%s", version, final)
        return final

    def champion(self) -> str | None:
        link = self.root / CHAMPION_LINK
        if not link.is_symlink():
            return None
        name = os.readlink(link)
        return name if (self.root / name).is_dir() else None

    def set_champion(self, version: str) -> None:
        """Switch the pointer with one rename, so readers see the old or the new champion."""
        self.resolve(version)
        tmp = self.root / f".tmp-link-{uuid.uuid4().hex[:8]}"
        os.symlink(version, tmp)
        os.replace(tmp, self.root / CHAMPION_LINK)
        log.info("event=champion_set version=%s", version)

    def clear_champion(self) -> None:
        """Back to version 0 (no trained version served): the pointer goes, in one unlink."""
        link = self.root / CHAMPION_LINK
        if link.is_symlink():
            link.unlink()
            log.info("event=champion_set version=v0")

    def metadata(self, version: str) -> dict[str, Any] | None:
        """A version's `training_metadata.json`, or None when it has none or it is unreadable."""
        try:
            return json.loads((self.resolve(version) / METADATA_FILE).read_text())
        except (RegistryError, OSError, ValueError):
            return None

    def remove_version(self, version: str) -> None:
        """Delete a version folder; never the champion. Renamed away first, so no half-deleted version."""
        path = self.resolve(version)
        if version == self.champion():
            raise RegistryError(f"version {version} is the champion; promote another version first")
        doomed = self.root / f".tmp-removed-{version}-{uuid.uuid4().hex[:8]}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("event=version_removed version=%s", version)

    def clean_partial(self) -> list[str]:
        """Remove temporary folders left by a killed writer; they were never visible as versions."""
        removed = []
        if self.root.exists():
            for p in self.root.glob(".tmp-*"):
                if p.is_symlink() or p.is_file():
                    p.unlink()
                else:
                    shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed


def version_number(version: str) -> int:
    match = VERSION_RE.match(version)
    if match is None:
        raise RegistryError(f"bad version name {version!r}")
    return int(match.group(1))


def previous_champion(statuses: dict[str, str], champion: str | None) -> str | None:
    """What a rollback returns to: the newest promoted version older than the champion.

    Versions an operator rolled back are `retired`, so successive rollbacks walk further back.
    """
    if champion is None:
        return None
    below = [v for v, status in statuses.items()
             if status == "promoted" and VERSION_RE.match(v) and version_number(v) < version_number(champion)]
    return max(below, key=version_number, default=None)


def rejected_to_prune(statuses: dict[str, str], keep: int, protected: set[str | None]) -> list[str]:
    """Rejected versions beyond the newest `keep`; `protected` (champion, previous champion) never."""
    rejected = sorted((v for v, status in statuses.items() if status == "rejected" and VERSION_RE.match(v)),
                      key=version_number, reverse=True)
    return [v for v in rejected[keep:] if v not in protected]
