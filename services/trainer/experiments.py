"""Online experiments' records, on the trainer's side: it owns the registry, so it keeps them.

The aggregator counts the experiment and publishes users' decision (`experiment.decided`); the
trainer's lifecycle (`lifecycle.py`) carries that decision out on the registry and ends the
experiment through this module. Here: an experiment's limits, starting a challenge or a *watch*
(after a promotion, the previous champion stays on as the comparison for a while), ending one,
the status of the versions it involves, and what users decided, kept on the run that trained it.
Nothing here moves the champion or announces a version.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.ml.ranking.pipeline import VERSION_ZERO
from shared.ml.registry import Registry
from shared.records import Experiment, ModelVersion, new_id, utcnow
from shared.settings import Settings
from shared.store import Store

log = logging.getLogger(__name__)


class Experiments:
    """The experiment records of one store, with the registry that says who is champion."""

    def __init__(self, settings: Settings, store: Store, registry: Registry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry

    def champion(self) -> str:
        return self.registry.champion() or VERSION_ZERO

    def new(self, kind: str, champion: str, challenger: str, started_by: str,
            run_id: str | None = None, experiment_id: str | None = None) -> Experiment:
        """An experiment with today's settings as its limits (a challenge and a watch differ)."""
        s = self.settings
        watch = kind == "watch"
        return Experiment(
            experiment_id=experiment_id or new_id(), kind=kind,  # type: ignore[arg-type]
            champion=champion, challenger=challenger,
            share=s.experiment_watch_share if watch else s.experiment_share,
            alpha=s.experiment_alpha,
            min_impressions=s.experiment_min_impressions,
            max_impressions=s.experiment_watch_impressions if watch else s.experiment_max_impressions,
            max_s=s.experiment_watch_s if watch else s.experiment_max_s,
            started_by=started_by, run_id=run_id)

    async def end_running(self, decision: str, reason: str,
                          evidence: dict[str, Any] | None = None) -> Experiment | None:
        """Ends the running experiment (if any) without acting on it: an operator or a newer
        challenger took over. A challenger left behind goes back to `rejected`."""
        running = await self.store.running_experiment()
        if running is None:
            return None
        if running.kind == "challenge":
            await self.set_status(running.challenger, "rejected", only_if="challenger")
        ended = await self.end(running, decision, reason, evidence or running.evidence)
        log.info("event=experiment_ended experiment=%s kind=%s decision=%s reason=%r",
                 ended.experiment_id, ended.kind, decision, reason)
        return ended

    async def end(self, experiment: Experiment, decision: str, reason: str,
                  evidence: dict[str, Any]) -> Experiment:
        """The experiment's record ends; the run that trained the version users judged keeps it."""
        ended = experiment.model_copy(update={"status": "ended", "decision": decision, "reason": reason,
                                              "evidence": evidence, "ended_at": utcnow()})
        await self.store.save_experiment(ended)
        await self.record_on_run(ended)
        return ended

    async def challenge(self, version: str, started_by: str, run_id: str | None = None) -> Experiment:
        """Users try `version` against the champion from now on; a running experiment ends. Whether
        `version` may be tried is the lifecycle's to check."""
        champion = self.champion()
        await self.end_running("superseded", f"{version} is tried against {champion} instead")
        experiment = self.new("challenge", champion, version, started_by, run_id)
        await self.set_status(version, "challenger")
        await self.store.save_experiment(experiment)
        log.info("event=experiment_started experiment=%s kind=challenge champion=%s challenger=%s share=%s",
                 experiment.experiment_id, champion, version, experiment.share)
        return experiment

    async def watch(self, champion: str, previous: str | None, started_by: str,
                    experiment_id: str | None = None) -> Experiment | None:
        """After a promotion: the previous champion stays as the comparison, on a small share."""
        if previous is None or previous == champion or self.settings.experiment_watch_share <= 0:
            return None
        experiment = self.new("watch", champion, previous, started_by, experiment_id=experiment_id)
        await self.store.save_experiment(experiment)
        log.info("event=experiment_started experiment=%s kind=watch champion=%s previous=%s share=%s",
                 experiment.experiment_id, champion, previous, experiment.share)
        return experiment

    async def set_status(self, version: str, status: str, only_if: str | None = None) -> None:
        if version == VERSION_ZERO:
            return
        entry = next((v for v in await self.store.list_model_versions() if v.version == version), None)
        if entry is None:
            entry = ModelVersion(version=version, location=version, status=status,  # type: ignore[arg-type]
                                 base_model=self.settings.base_model)
        elif only_if is not None and entry.status != only_if:
            return
        await self.store.save_model_version(entry.model_copy(update={"status": status}))

    async def record_on_run(self, experiment: Experiment) -> None:
        """The run that trained the version users judged keeps what they decided, and why."""
        judged = experiment.challenger if experiment.kind == "challenge" else experiment.champion
        run = next((r for r in await self.store.list_training_runs(limit=500) if r.version == judged), None)
        if run is None:
            return
        entry = {"experiment_id": experiment.experiment_id, "kind": experiment.kind,
                 "champion": experiment.champion, "challenger": experiment.challenger,
                 "decision": experiment.decision, "reason": experiment.reason,
                 "evidence": {k: v for k, v in experiment.evidence.items() if k != "queries"},
                 "ended_at": experiment.ended_at.isoformat() if experiment.ended_at else None}
        run.online = [*(o for o in run.online if o.get("experiment_id") != experiment.experiment_id), entry]
        await self.store.save_training_run(run)
