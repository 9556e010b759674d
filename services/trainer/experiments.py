"""Online experiments, on the trainer's side: it owns the registry, so it starts them and acts on them.

The aggregator counts the experiment and publishes users' decision (`experiment.decided`); here
that decision moves the registry: a preferred challenger becomes the champion and the previous
champion stays on as the comparison for a while (a *watch*); one users did not prefer is
retired; a watch that users decide against rolls the champion back. Every step writes the
registry first and ends the experiment's record last, so a decision delivered twice (a crash
in between) is carried out once.
"""

from __future__ import annotations

import logging
from typing import Any

from shared import metrics
from shared.events import ExperimentDecidedEvent, ModelReadyEvent, new_id, utcnow
from shared.ml.pipeline import VERSION_ZERO
from shared.ml.registry import Registry, RegistryError
from shared.settings import Settings
from shared.store import Experiment, ModelVersion, Store

log = logging.getLogger(__name__)


class ExperimentError(Exception):
    """An experiment action that cannot be done; `status_code` is the HTTP answer."""

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


class Experiments:
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
            await self._set_status(running.challenger, "rejected", only_if="challenger")
        ended = running.model_copy(update={"status": "ended", "decision": decision, "reason": reason,
                                           "evidence": evidence or running.evidence, "ended_at": utcnow()})
        await self.store.save_experiment(ended)
        await self._record_on_run(ended)
        log.info("event=experiment_ended experiment=%s kind=%s decision=%s reason=%r",
                 ended.experiment_id, ended.kind, decision, reason)
        return ended

    async def challenge(self, version: str, started_by: str, run_id: str | None = None) -> Experiment:
        """Users try `version` against the champion from now on; a running experiment ends."""
        champion = self.champion()
        if version == champion:
            raise ExperimentError(f"version {version} is the champion already")
        if version != VERSION_ZERO:
            try:
                self.registry.resolve(version)
            except RegistryError as exc:
                raise ExperimentError(f"version {version} cannot be tried: {exc}", 404) from exc
        await self.end_running("superseded", f"{version} is tried against {champion} instead")
        experiment = self.new("challenge", champion, version, started_by, run_id)
        await self._set_status(version, "challenger")
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

    async def act(self, event: ExperimentDecidedEvent) -> ModelReadyEvent | None:
        """Carry out users' decision; None when the experiment has already ended (a redelivery)."""
        experiment = await self.store.get_experiment(event.experiment_id)
        if experiment is None or experiment.status != "running":
            log.info("event=experiment_decision_ignored experiment=%s reason=not_running",
                     event.experiment_id)
            return None
        ended = experiment.model_copy(update={"status": "ended", "decision": event.decision,
                                              "reason": event.reason, "evidence": event.evidence,
                                              "ended_at": utcnow()})
        champion, challenger = experiment.champion, experiment.challenger
        ready: ModelReadyEvent
        if event.decision == "promote":
            self.switch_to(challenger)
            await self._set_status(challenger, "promoted")
            # A deterministic id: a decision delivered twice starts the same watch, not two.
            watch = await self.watch(challenger, champion, f"promotion of {challenger}",
                                     experiment_id=f"{experiment.experiment_id}-watch")
            ready = self._ready(challenger, "promoted", f"users preferred it online: {event.reason}",
                                watch.experiment_id if watch else None)
        elif event.decision == "rollback":
            self.switch_to(challenger)
            await self._set_status(champion, "retired")
            metrics.ROLLBACKS.labels("automatic").inc()
            log.warning("event=rolled_back trigger=automatic from=%s to=%s experiment=%s reason=%r",
                        champion, challenger, experiment.experiment_id, event.reason)
            ready = self._ready(challenger, "promoted", f"rolled back automatically from {champion}: "
                                                        f"{event.reason}")
        elif event.decision == "retire":
            await self._set_status(challenger, "rejected", only_if="challenger")
            ready = self._ready(challenger, "retired", f"users did not prefer it online: {event.reason}")
        else:  # keep: the watch is over, the new champion stays
            ready = self._ready(challenger, "retired", f"watch ended, {champion} stays: {event.reason}")
        await self.store.save_experiment(ended)
        await self._record_on_run(ended)
        log.info("event=experiment_decided experiment=%s kind=%s decision=%s reason=%r",
                 experiment.experiment_id, experiment.kind, event.decision, event.reason)
        return ready

    def switch_to(self, version: str) -> None:
        if version == VERSION_ZERO:
            self.registry.clear_champion()
        else:
            self.registry.set_champion(version)

    async def _set_status(self, version: str, status: str, only_if: str | None = None) -> None:
        if version == VERSION_ZERO:
            return
        entry = next((v for v in await self.store.list_model_versions() if v.version == version), None)
        if entry is None:
            entry = ModelVersion(version=version, location=version, status=status,  # type: ignore[arg-type]
                                 base_model=self.settings.base_model)
        elif only_if is not None and entry.status != only_if:
            return
        await self.store.save_model_version(entry.model_copy(update={"status": status}))

    async def _record_on_run(self, experiment: Experiment) -> None:
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

    def _ready(self, version: str, decision: str, reason: str,
               experiment_id: str | None = None) -> ModelReadyEvent:
        return ModelReadyEvent(version=version, location="" if version == VERSION_ZERO else version,
                               base_model=self.settings.base_model, decision=decision,  # type: ignore[arg-type]
                               reason=reason[:500], experiment_id=experiment_id)
