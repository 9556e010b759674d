"""A version's life: the only code that moves the champion and announces a version (`model.ready`).

A run's candidate enters as its gate decided (`enter`): the champion (offline promotion), the
challenger users try, or rejected. Users' decision on an experiment (`decide`) and an operator's
`promote`, `rollback`, `challenge` and `stop_experiment` move versions on from there. Each move
writes the store's index, then the registry's `current` pointer (`move_champion`), then the
experiment's record, so that a crash in between leaves what `VersionIndex.reconcile` recognises,
or a decision delivered twice carried out once; then it builds the `model.ready` that tells the
rerankers (`ready`), which `announce` publishes. The worker, the admin API and the CLI all go
through one `Lifecycle`; what it refuses raises `LifecycleError`.
"""

from __future__ import annotations

import logging
from typing import Any

from services.trainer.experiments import Experiments
from services.trainer.versions import VersionIndex
from shared import metrics
from shared.events import (
    MODEL_READY_TOPIC,
    TRAINING_REQUESTED_TOPIC,
    ExperimentDecidedEvent,
    ModelReadyEvent,
    TrainingRequestedEvent,
)
from shared.messaging.producer import Producer
from shared.ml.ranking.pipeline import VERSION_ZERO
from shared.ml.registry import Registry, RegistryError, previous_champion
from shared.ml.training.hyperparameters import RequestValues
from shared.records import Experiment, ModelVersion, TrainingRun
from shared.settings import Settings
from shared.store import Store
from shared.vocab import GateDecision, ReadyDecision

log = logging.getLogger(__name__)


class LifecycleError(Exception):
    """A version or experiment action that cannot be done; `status_code` is the HTTP answer."""

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


def move_champion(registry: Registry, version: str) -> None:
    """The registry's `current` pointer to `version` (version 0: no pointer), in one rename."""
    if version == VERSION_ZERO:
        registry.clear_champion()
    else:
        registry.set_champion(version)


async def announce(producer: Producer, event: ModelReadyEvent) -> None:
    """Publish `model.ready` and wait for the broker's ack."""
    await producer.publish(MODEL_READY_TOPIC, event, key="model")
    log.info("event=model_ready_sent version=%s decision=%s", event.version, event.decision)


async def request_training(producer: Producer, hyperparameters: RequestValues | None = None,
                           include_test: bool | None = None) -> TrainingRequestedEvent:
    """A `manual` training request, for operators who do not want to wait for the threshold."""
    event = TrainingRequestedEvent(reason="manual", include_test=include_test,
                                   hyperparameters=hyperparameters.given() if hyperparameters else {})
    await producer.publish(TRAINING_REQUESTED_TOPIC, event, key="training")
    log.info("event=training_requested request=%s reason=manual hyperparameters=%s", event.event_id,
             event.hyperparameters)
    return event


class Lifecycle:
    """What can happen to registry versions, by a run, by users' decision or by an operator."""

    def __init__(self, settings: Settings, store: Store, registry: Registry, producer: Producer) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.producer = producer  # the service's one producer: `model.ready` for every move
        self.experiments = Experiments(settings, store, registry)
        self.versions = VersionIndex(settings, store, registry, self.experiments)

    def ready(self, version: str, decision: ReadyDecision, reason: str, *, entry: ModelVersion | None = None,
              metrics: dict[str, Any] | None = None, experiment_id: str | None = None,
              request_event_id: str | None = None) -> ModelReadyEvent:
        """The `model.ready` for `version` ("" for a run that wrote none). `entry`: the version's index
        entry, whose base model and metrics it carries; else the trainer's base model and `metrics`."""
        values = entry.metrics if entry is not None else metrics or {}
        return ModelReadyEvent(
            version=version, location="" if version == VERSION_ZERO else version,
            base_model=entry.base_model if entry is not None else self.settings.base_model,
            metrics={k: float(v) for k, v in values.items() if isinstance(v, int | float)},
            decision=decision, reason=reason[:500], request_event_id=request_event_id,
            experiment_id=experiment_id)

    def run_ended(self, run: TrainingRun, decision: ReadyDecision, request_event_id: str,
                  experiment_id: str | None = None) -> ModelReadyEvent:
        """What a finished run announces: its version, metrics and reason, and the request it answers."""
        return self.ready(run.version or "", decision, run.detail, metrics=run.metrics,
                          experiment_id=experiment_id, request_event_id=request_event_id)

    async def enter(self, version: str, decision: GateDecision, summary: dict[str, float],
                    run_id: str) -> str | None:
        """A run's new version, as its gate decided: in the store's index first, then the champion
        pointer (promoted) or the experiment users decide in (challenger: its id is returned). A
        crash in between leaves an indexed, unserved version that `reconcile` removes with its run."""
        await self.store.save_model_version(ModelVersion(
            version=version, location=version, status=decision, base_model=self.settings.base_model,
            metrics=summary))
        if decision == "promoted":
            move_champion(self.registry, version)
        elif decision == "challenger":
            return (await self._try(version, f"training run {run_id}", run_id=run_id)).experiment_id
        return None

    async def decide(self, event: ExperimentDecidedEvent) -> ModelReadyEvent | None:
        """Carry out users' decision; None when the experiment has already ended (a redelivery).

        A preferred challenger becomes the champion and the previous champion stays on as the
        comparison (a watch); one users did not prefer is retired; a watch that users decide
        against rolls the champion back."""
        experiment = await self.store.get_experiment(event.experiment_id)
        if experiment is None or experiment.status != "running":
            log.info("event=experiment_decision_ignored experiment=%s reason=not_running",
                     event.experiment_id)
            return None
        champion, challenger = experiment.champion, experiment.challenger
        if event.decision == "promote":
            move_champion(self.registry, challenger)
            await self.experiments.set_status(challenger, "promoted")
            # A deterministic id: a decision delivered twice starts the same watch, not two.
            watch = await self.experiments.watch(challenger, champion, f"promotion of {challenger}",
                                                 experiment_id=f"{experiment.experiment_id}-watch")
            ready = self.ready(challenger, "promoted", f"users preferred it online: {event.reason}",
                               experiment_id=watch.experiment_id if watch else None)
        elif event.decision == "rollback":
            move_champion(self.registry, challenger)
            await self.experiments.set_status(champion, "retired")
            metrics.ROLLBACKS.labels("automatic").inc()
            log.warning("event=rolled_back trigger=automatic from=%s to=%s experiment=%s reason=%r",
                        champion, challenger, experiment.experiment_id, event.reason)
            ready = self.ready(challenger, "promoted",
                               f"rolled back automatically from {champion}: {event.reason}")
        elif event.decision == "retire":
            await self.experiments.set_status(challenger, "rejected", only_if="challenger")
            ready = self.ready(challenger, "retired", f"users did not prefer it online: {event.reason}")
        else:  # keep: the watch is over, the new champion stays
            ready = self.ready(challenger, "retired", f"watch ended, {champion} stays: {event.reason}")
        await self.experiments.end(experiment, event.decision, event.reason, event.evidence)
        log.info("event=experiment_decided experiment=%s kind=%s decision=%s reason=%r",
                 experiment.experiment_id, experiment.kind, event.decision, event.reason)
        return ready

    async def promote(self, version: str, reason: str = "promoted by an operator") -> ModelReadyEvent:
        """Make `version` the champion (whatever its gate or users said) and tell the rerankers.

        A running experiment ends; the previous champion is then watched like after a win online."""
        entry = await self._indexed(version)
        try:
            self.registry.resolve(version)
        except RegistryError as exc:
            raise LifecycleError(f"version {version} has no folder any more ({exc})", 409) from exc
        previous = self.experiments.champion()
        await self.experiments.end_running("stopped", f"an operator promoted {version}")
        await self.store.save_model_version(entry.model_copy(update={"status": "promoted"}))
        move_champion(self.registry, version)
        watch = await self.experiments.watch(version, previous, f"promotion of {version} by an operator")
        return await self._announce(self.ready(version, "promoted", reason, entry=entry,
                                               experiment_id=watch.experiment_id if watch else None))

    async def rollback(self) -> ModelReadyEvent:
        """Back to the previous champion (version 0 when there is none); the one left is `retired`."""
        index = await self.versions.entries()
        champion = self.registry.champion()
        if champion is None:
            raise LifecycleError("no champion: version 0 is served, there is nothing to roll back")
        target = previous_champion({v: m.status for v, m in index.items()}, champion)
        if target is not None and not (self.registry.root / target).is_dir():
            raise LifecycleError(f"the previous champion {target} has no folder any more; "
                                 "promote a version explicitly instead")
        await self.experiments.end_running("stopped", f"an operator rolled back from {champion}")
        move_champion(self.registry, target or VERSION_ZERO)
        if champion in index:
            await self.store.save_model_version(index[champion].model_copy(update={"status": "retired"}))
        metrics.ROLLBACKS.labels("operator").inc()
        log.warning("event=rolled_back trigger=operator from=%s to=%s", champion, target or VERSION_ZERO)
        return await self._announce(self.ready(target or VERSION_ZERO, "promoted",
                                               f"rolled back from {champion}",
                                               entry=index[target] if target else None))

    async def challenge(self, version: str) -> ModelReadyEvent:
        """Let users compare `version` with the champion (an operator's experiment)."""
        if version != VERSION_ZERO:
            await self._indexed(version)
        experiment = await self._try(version, "an operator")
        return await self._announce(self.ready(
            version, "challenger", f"tried against {experiment.champion} by an operator",
            experiment_id=experiment.experiment_id))

    async def stop_experiment(self) -> ModelReadyEvent:
        """End the running experiment; the champion stays and serves alone."""
        ended = await self.experiments.end_running("stopped", "stopped by an operator")
        if ended is None:
            raise LifecycleError("no experiment is running")
        return await self._announce(self.ready(ended.challenger, "retired",
                                               "experiment stopped by an operator",
                                               experiment_id=ended.experiment_id))

    async def _try(self, version: str, started_by: str, run_id: str | None = None) -> Experiment:
        """Users try `version` against the champion from now on; a running experiment ends."""
        if version == self.experiments.champion():
            raise LifecycleError(f"version {version} is the champion already")
        if version != VERSION_ZERO:
            try:
                self.registry.resolve(version)
            except RegistryError as exc:
                raise LifecycleError(f"version {version} cannot be tried: {exc}", 404) from exc
        return await self.experiments.challenge(version, started_by, run_id)

    async def _indexed(self, version: str) -> ModelVersion:
        entry = (await self.versions.entries()).get(version)
        if entry is None:
            raise LifecycleError(f"version {version!r} is not in the index; GET /admin/versions lists them",
                                 404)
        return entry

    async def _announce(self, event: ModelReadyEvent) -> ModelReadyEvent:
        await announce(self.producer, event)
        return event
