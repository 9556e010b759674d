"""The registry on disk and its index in the store: atomic writes, champion pointer, retention, recovery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.trainer.lifecycle import Lifecycle
from services.trainer.versions import VersionIndex
from shared.messaging.producer import Producer
from shared.ml.registry import (
    METADATA_FILE,
    Registry,
    RegistryError,
    previous_champion,
    rejected_to_prune,
)
from shared.records import ModelVersion, TrainingRun
from shared.settings import Settings
from shared.store import open_store


def write(registry: Registry, version: str, run_id: str = "", decision: str = "rejected") -> Path:
    def fill(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / METADATA_FILE).write_text(json.dumps({"version": version, "run_id": run_id,
                                                        "decision": decision}))

    return registry.write_version(version, fill)


def test_a_failed_write_leaves_no_version_and_no_temporary_folder(tmp_path: Path) -> None:
    registry = Registry(tmp_path).ensure()

    def half_written(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.write_version("v0001", half_written)
    assert registry.versions() == []
    assert list(tmp_path.iterdir()) == []
    assert registry.next_version() == "v0001"


def test_versions_are_numbered_and_never_overwritten(tmp_path: Path) -> None:
    registry = Registry(tmp_path).ensure()
    write(registry, "v0001")
    assert registry.next_version() == "v0002"
    with pytest.raises(RegistryError, match="already exists"):
        write(registry, "v0001")
    with pytest.raises(RegistryError, match="bad version name"):
        write(registry, "latest")


@pytest.mark.parametrize("location", ["", "../v0001", "/etc", "v0001/../../x", "current", "v1", "v0009"])
def test_resolve_refuses_anything_but_an_existing_version_folder(tmp_path: Path, location: str) -> None:
    registry = Registry(tmp_path / "models").ensure()
    write(registry, "v0001")
    (tmp_path / "v0001").mkdir()
    with pytest.raises(RegistryError):
        registry.resolve(location)
    assert registry.resolve("v0001") == (tmp_path / "models" / "v0001").resolve()


def test_the_champion_pointer_is_one_symlink_switched_in_place(tmp_path: Path) -> None:
    registry = Registry(tmp_path).ensure()
    assert registry.champion() is None
    write(registry, "v0001")
    write(registry, "v0002")
    registry.set_champion("v0001")
    registry.set_champion("v0002")
    assert registry.champion() == "v0002"
    assert os.readlink(tmp_path / "current") == "v0002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v0001", "v0002"]
    with pytest.raises(RegistryError):
        registry.set_champion("v0003")


def test_clean_partial_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    registry = Registry(tmp_path).ensure()
    write(registry, "v0001")
    registry.set_champion("v0001")
    (tmp_path / ".tmp-v0002-abcd").mkdir()
    (tmp_path / ".tmp-v0002-abcd" / "model.safetensors").write_bytes(b"half")
    os.symlink("v0001", tmp_path / ".tmp-link-1234")
    assert sorted(registry.clean_partial()) == [".tmp-link-1234", ".tmp-v0002-abcd"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v0001"]
    assert registry.champion() == "v0001"


def test_remove_version_never_removes_the_champion(tmp_path: Path) -> None:
    registry = Registry(tmp_path).ensure()
    write(registry, "v0001")
    write(registry, "v0002")
    registry.set_champion("v0001")
    with pytest.raises(RegistryError, match="champion"):
        registry.remove_version("v0001")
    registry.remove_version("v0002")
    assert registry.versions() == ["v0001"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_previous_champion_is_the_newest_promoted_version_before_the_champion() -> None:
    statuses = {"v0001": "promoted", "v0002": "rejected", "v0003": "promoted", "v0004": "retired",
                "v0005": "promoted"}
    assert previous_champion(statuses, "v0005") == "v0003"
    assert previous_champion(statuses, "v0003") == "v0001"
    assert previous_champion(statuses, "v0001") is None
    assert previous_champion(statuses, None) is None


def test_retention_keeps_the_newest_rejected_and_never_a_protected_version() -> None:
    statuses = {f"v{i:04d}": "rejected" for i in range(1, 8)} | {"v0008": "promoted", "v0009": "pruned"}
    assert rejected_to_prune(statuses, 3, set()) == ["v0004", "v0003", "v0002", "v0001"]
    assert rejected_to_prune(statuses, 3, {"v0002", None}) == ["v0004", "v0003", "v0001"]
    assert rejected_to_prune(statuses, 10, set()) == []
    assert rejected_to_prune(statuses, 0, set()) == [f"v{i:04d}" for i in range(7, 0, -1)]


@pytest.fixture
async def versions(tmp_path: Path):  # noqa: ANN201
    settings = Settings(store_url=f"sqlite:///{tmp_path / 'store.db'}", model_dir=tmp_path / "models",
                        registry_keep_rejected=2)
    store = await open_store(settings.store_url)
    try:
        # Prune and reconcile announce nothing: the producer is never started.
        yield Lifecycle(settings, store, Registry(settings.model_dir).ensure(), Producer(settings)).versions
    finally:
        await store.close()


async def index(versions: VersionIndex, name: str, status: str) -> None:
    await versions.store.save_model_version(ModelVersion(version=name, location=name, status=status,
                                                         base_model="tiny", metrics={"candidate_auc": 0.9}))


async def test_prune_removes_old_rejected_folders_and_keeps_their_index_entries(
        versions: VersionIndex) -> None:
    registry = versions.registry
    for i, status in enumerate(["promoted", "rejected", "rejected", "rejected", "promoted", "rejected"], 1):
        write(registry, f"v{i:04d}", decision=status)
        await index(versions, f"v{i:04d}", status)
    registry.set_champion("v0005")

    assert await versions.prune() == ["v0003", "v0002"]
    assert registry.versions() == ["v0001", "v0004", "v0005", "v0006"]
    listing = await versions.listing()
    by_name = {v["version"]: v for v in listing["versions"]}
    assert by_name["v0002"]["status"] == "pruned" and not by_name["v0002"]["on_disk"]
    assert by_name["v0004"]["status"] == "rejected" and by_name["v0004"]["on_disk"]
    assert listing["champion"] == "v0005" and listing["previous_champion"] == "v0001"
    assert by_name["v0005"]["champion"] and by_name["v0001"]["previous_champion"]
    assert await versions.prune() == []


async def test_reconcile_undoes_a_killed_run_and_makes_the_index_agree(versions: VersionIndex) -> None:
    registry, store = versions.registry, versions.store
    write(registry, "v0001", decision="promoted")
    await index(versions, "v0001", "promoted")
    registry.set_champion("v0001")
    killed = TrainingRun(run_id="killed-run", reason="manual")
    await store.save_training_run(killed)
    write(registry, "v0002", run_id="killed-run", decision="promoted")
    await index(versions, "v0002", "promoted")  # killed after indexing, before the pointer switch
    write(registry, "v0003", decision="rejected")  # written by the notebook, never indexed
    await index(versions, "v0004", "rejected")  # folder deleted by hand
    (registry.root / ".tmp-v0005-dead").mkdir()

    report = await versions.reconcile()

    assert report["removed"] == ["v0002"] and report["failed_runs"] == ["killed-run"]
    assert report["indexed"] == ["v0003"] and report["missing"] == ["v0004"]
    assert report["partial"] == [".tmp-v0005-dead"]
    assert registry.versions() == ["v0001", "v0003"]
    assert registry.champion() == "v0001"
    statuses = {v.version: v.status for v in await store.list_model_versions()}
    assert statuses == {"v0001": "promoted", "v0002": "pruned", "v0003": "rejected", "v0004": "pruned"}
    run = (await store.list_training_runs())[0]
    assert run.status == "failed" and "stopped during the run" in run.detail and run.finished_at
    assert await versions.reconcile() == {"partial": [], "failed_runs": [], "removed": [], "indexed": [],
                                          "missing": [], "experiments": []}
