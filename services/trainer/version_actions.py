"""Operator actions: request a run; list, promote, roll back, prune and recover registry versions.

One implementation for the trainer's admin API, its command line and the worker. Folders are
changed first only where a crash would leave an orphan that `reconcile` can recognise.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.trainer.experiments import VERSION_ZERO, Experiments
from shared import metrics
from shared.events import (
    MODEL_READY_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    Event,
    ModelReadyEvent,
    TrainingRequestedEvent,
    utcnow,
)
from shared.kafka import make_producer, publish
from shared.ml.hyperparameters import Hyperparameters
from shared.ml.registry import (
    Registry,
    RegistryError,
    previous_champion,
    rejected_to_prune,
    version_number,
)
from shared.settings import Settings
from shared.store import ModelVersion, Store

log = logging.getLogger(__name__)

ON_DISK = ("promoted", "challenger", "rejected", "retired")


class VersionActionError(Exception):
    """An operator action that cannot be done; `status_code` is the HTTP answer."""

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


def _send(settings: Settings, topic: str, event: Event, key: str) -> None:
    producer = make_producer(settings)
    try:
        publish(producer, topic, event, key=key)
    finally:
        producer.close(5)


async def announce(settings: Settings, event: ModelReadyEvent) -> None:
    """Publish `model.ready` and wait for the broker's ack (off the event loop)."""
    await asyncio.to_thread(_send, settings, MODEL_READY_TOPIC, event, "model")
    log.info("event=model_ready_sent version=%s decision=%s", event.version, event.decision)


async def request_training(settings: Settings, hyperparameters: Hyperparameters | None = None,
                           include_test: bool | None = None) -> TrainingRequestedEvent:
    """A `manual` training request, for operators who do not want to wait for the threshold."""
    event = TrainingRequestedEvent(reason="manual", include_test=include_test,
                                   hyperparameters=hyperparameters.given() if hyperparameters else {})
    await asyncio.to_thread(_send, settings, TRAINING_REQUESTED_TOPIC, event, "training")
    log.info("event=training_requested request=%s reason=manual hyperparameters=%s", event.event_id,
             event.hyperparameters)
    return event


class VersionActions:
    """What can be done to registry versions, by an operator or by the worker after a run."""

    def __init__(self, settings: Settings, store: Store, registry: Registry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.experiments = Experiments(settings, store, registry)

    async def index(self) -> dict[str, ModelVersion]:
        return {v.version: v for v in await self.store.list_model_versions()}

    async def listing(self) -> dict[str, Any]:
        """Every indexed version with its status, metrics, the run's reason, and where it stands."""
        index = await self.index()
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

    async def promote(self, version: str, reason: str = "promoted by an operator") -> ModelReadyEvent:
        """Make `version` the champion (whatever its gate or users said) and tell the rerankers.

        A running experiment ends; the previous champion is then watched like after a win online."""
        entry = (await self.index()).get(version)
        if entry is None:
            raise VersionActionError(
                f"version {version!r} is not in the index; GET /admin/versions lists them", 404)
        try:
            self.registry.resolve(version)
        except RegistryError as exc:
            raise VersionActionError(f"version {version} has no folder any more ({exc})", 409) from exc
        previous = self.experiments.champion()
        await self.experiments.end_running("stopped", f"an operator promoted {version}")
        await self.store.save_model_version(entry.model_copy(update={"status": "promoted"}))
        self.registry.set_champion(version)
        watch = await self.experiments.watch(version, previous, f"promotion of {version} by an operator")
        event = self._ready(entry, reason, watch.experiment_id if watch else None)
        await announce(self.settings, event)
        return event

    async def rollback(self) -> ModelReadyEvent:
        """Back to the previous champion (version 0 when there is none); the one left is `retired`."""
        index = await self.index()
        champion = self.registry.champion()
        if champion is None:
            raise VersionActionError("no champion: version 0 is served, there is nothing to roll back")
        target = previous_champion({v: m.status for v, m in index.items()}, champion)
        if target is not None and not (self.registry.root / target).is_dir():
            raise VersionActionError(f"the previous champion {target} has no folder any more; "
                                     "promote a version explicitly instead")
        await self.experiments.end_running("stopped", f"an operator rolled back from {champion}")
        self.experiments.switch_to(target or VERSION_ZERO)
        if champion in index:
            await self.store.save_model_version(index[champion].model_copy(update={"status": "retired"}))
        metrics.ROLLBACKS.labels("operator").inc()
        log.warning("event=rolled_back trigger=operator from=%s to=%s", champion, target or VERSION_ZERO)
        reason = f"rolled back from {champion}"
        event = (self._ready(index[target], reason) if target else ModelReadyEvent(
            version=VERSION_ZERO, location="", base_model=self.settings.base_model, decision="promoted",
            reason=reason))
        await announce(self.settings, event)
        return event

    async def challenge(self, version: str) -> ModelReadyEvent:
        """Let users compare `version` with the champion (an operator's experiment)."""
        if version != VERSION_ZERO and version not in await self.index():
            raise VersionActionError(
                f"version {version!r} is not in the index; GET /admin/versions lists them", 404)
        experiment = await self.experiments.challenge(version, "an operator")
        event = ModelReadyEvent(version=version, location=version if version != VERSION_ZERO else "",
                                base_model=self.settings.base_model, decision="challenger",
                                reason=f"tried against {experiment.champion} by an operator",
                                experiment_id=experiment.experiment_id)
        await announce(self.settings, event)
        return event

    async def stop_experiment(self) -> ModelReadyEvent:
        """End the running experiment; the champion stays and serves alone."""
        ended = await self.experiments.end_running("stopped", "stopped by an operator")
        if ended is None:
            raise VersionActionError("no experiment is running")
        event = ModelReadyEvent(version=ended.challenger, location=ended.challenger, decision="retired",
                                base_model=self.settings.base_model, experiment_id=ended.experiment_id,
                                reason="experiment stopped by an operator")
        await announce(self.settings, event)
        return event

    async def prune(self) -> list[str]:
        """Rejected versions beyond the retention count lose their folder; their index entry stays."""
        index = await self.index()
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
        index = await self.index()
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
        entry = (await self.index()).get(version)
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

    def _ready(self, entry: ModelVersion, reason: str, experiment_id: str | None = None) -> ModelReadyEvent:
        return ModelReadyEvent(
            version=entry.version, location=entry.version, base_model=entry.base_model,
            metrics={k: float(v) for k, v in entry.metrics.items() if isinstance(v, int | float)},
            decision="promoted", reason=reason, experiment_id=experiment_id,
        )
