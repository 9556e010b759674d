"""The store's index of registry versions, kept in agreement with the folders.

What the versions are (`listing`), which old rejected ones lose their folder (`prune`), and, after
a crash, what an unfinished run wrote and which entries or folders disagree (`reconcile`,
`discard_run`). Nothing here moves the champion or announces a version: that is `lifecycle.py`.
"""

from __future__ import annotations

import logging
from typing import Any

from services.trainer.experiments import Experiments
from shared.ml.ranking.pipeline import VERSION_ZERO
from shared.ml.registry import Registry, previous_champion, rejected_to_prune, version_number
from shared.records import ModelVersion, utcnow
from shared.settings import Settings
from shared.store import Store

log = logging.getLogger(__name__)

ON_DISK = ("promoted", "challenger", "rejected", "retired")


class VersionIndex:
    """The index entries of one store beside the folders of one registry."""

    def __init__(self, settings: Settings, store: Store, registry: Registry,
                 experiments: Experiments) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.experiments = experiments

    async def entries(self) -> dict[str, ModelVersion]:
        return {v.version: v for v in await self.store.list_model_versions()}

    async def listing(self) -> dict[str, Any]:
        """Every indexed version with its status, metrics, the run's reason, and where it stands."""
        index = await self.entries()
        champion = self.registry.champion()
        on_disk = set(self.registry.versions())
        previous = previous_champion({v: m.status for v, m in index.items()}, champion)
        reasons = {r.version: r.detail for r in await self.store.list_training_runs(limit=1000) if r.version}
        items = []
        for name in sorted(index, key=version_number, reverse=True):
            entry = index[name]
            items.append({**entry.model_dump(mode="json"), "champion": name == champion,
                          "previous_champion": name == previous, "on_disk": name in on_disk,
                          "reason": reasons.get(name, "")})
        return {"champion": champion, "previous_champion": previous, "versions": items}

    async def prune(self) -> list[str]:
        """Rejected versions beyond the retention count lose their folder; their index entry stays."""
        index = await self.entries()
        statuses = {v: m.status for v, m in index.items()}
        champion = self.registry.champion()
        running = await self.store.running_experiment()
        protected = {champion, previous_champion(statuses, champion),
                     *((running.champion, running.challenger) if running else ())}
        removed = []
        for version in rejected_to_prune(statuses, self.settings.registry_keep_rejected, protected):
            if (self.registry.root / version).is_dir():
                self.registry.remove_version(version)
            await self.store.save_model_version(index[version].model_copy(update={"status": "pruned"}))
            removed.append(version)
        if removed:
            log.info("event=versions_pruned versions=%s keep_rejected=%d", ",".join(removed),
                     self.settings.registry_keep_rejected)
        return removed

    async def reconcile(self) -> dict[str, list[str]]:
        """After a crash: runs left running are failed, their versions removed; index and folders agree.

        A run that got as far as switching the champion is kept as promoted (it was served), one
        whose version users are trying already as the challenger; an experiment whose challenger
        has no folder any more ends.
        """
        report: dict[str, list[str]] = {"partial": self.registry.clean_partial(), "failed_runs": [],
                                        "removed": [], "indexed": [], "missing": [], "experiments": []}
        champion = self.registry.champion()
        running = await self.store.running_experiment()
        for run in await self.store.list_training_runs(limit=1000):
            if run.status != "running":
                continue
            version = self.run_version(run.run_id)
            if version is not None and version == champion:
                run.status, run.version = "promoted", version
                run.detail = "promoted; recorded after the trainer restarted"
            elif version is not None and running is not None and version == running.challenger:
                run.status, run.version = "challenger", version
                run.detail = "tried on users; recorded after the trainer restarted"
            else:
                run.status, run.detail = "failed", "the trainer stopped during the run; nothing was changed"
                report["removed"] += await self.discard_run(run.run_id)
                report["failed_runs"].append(run.run_id)
            run.finished_at = utcnow()
            await self.store.save_training_run(run)
        index = await self.entries()
        for version in self.registry.versions():
            if version not in index:
                await self.store.save_model_version(self._entry_from_folder(version, champion))
                report["indexed"].append(version)
        on_disk = set(self.registry.versions())
        for version, entry in index.items():
            if entry.status in ON_DISK and version not in on_disk:
                await self.store.save_model_version(entry.model_copy(update={"status": "pruned"}))
                report["missing"].append(version)
        running = await self.store.running_experiment()
        if running is not None and any(v != VERSION_ZERO and v not in on_disk
                                       for v in (running.champion, running.challenger)):
            await self.experiments.end_running("stopped", "one of its versions has no folder any more")
            report["experiments"].append(running.experiment_id)
        for key, names in report.items():
            if names:
                log.warning("event=registry_reconciled what=%s names=%s", key, ",".join(names))
        return report

    def run_version(self, run_id: str) -> str | None:
        """The version folder a run wrote, found by the run id in its metadata."""
        return next((v for v in self.registry.versions()
                     if (self.registry.metadata(v) or {}).get("run_id") == run_id), None)

    async def discard_run(self, run_id: str) -> list[str]:
        """Remove what an unfinished run wrote (never the champion); its index entry, if any, is pruned."""
        version = self.run_version(run_id)
        running = await self.store.running_experiment()
        if version is None or version == self.registry.champion() or (
                running is not None and version in (running.champion, running.challenger)):
            return []
        self.registry.remove_version(version)
        entry = (await self.entries()).get(version)
        if entry is not None:
            await self.store.save_model_version(entry.model_copy(update={"status": "pruned"}))
        return [version]

    def _entry_from_folder(self, version: str, champion: str | None) -> ModelVersion:
        """An index entry for a folder written outside the trainer (the notebook, another store)."""
        meta = self.registry.metadata(version) or {}
        decision = meta.get("decision")
        status = "promoted" if version == champion or decision == "promoted" else "rejected"
        metrics = meta.get("metrics", {}).get("candidate", {})
        return ModelVersion(version=version, location=version, status=status,
                            base_model=str(meta.get("started_from", self.settings.base_model)),
                            metrics={f"candidate_{k}": v for k, v in metrics.items()
                                     if isinstance(v, int | float)})
