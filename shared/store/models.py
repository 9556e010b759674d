"""The models' part of the store: training runs, the registry's version index, online experiments."""

from __future__ import annotations

import abc

from shared.records import Experiment, Feedback, Interaction, ModelVersion, TrainingRun


class ModelStore(abc.ABC):
    """Training runs, model versions and the experiments that decide between them."""

    @abc.abstractmethod
    async def save_training_run(self, run: TrainingRun) -> None: ...

    @abc.abstractmethod
    async def list_training_runs(self, limit: int = 50) -> list[TrainingRun]: ...

    @abc.abstractmethod
    async def save_model_version(self, version: ModelVersion) -> None: ...

    @abc.abstractmethod
    async def list_model_versions(self) -> list[ModelVersion]: ...

    @abc.abstractmethod
    async def save_experiment(self, experiment: Experiment) -> None: ...

    @abc.abstractmethod
    async def get_experiment(self, experiment_id: str) -> Experiment | None: ...

    @abc.abstractmethod
    async def list_experiments(self, limit: int = 50) -> list[Experiment]:
        """Newest first."""

    async def running_experiment(self) -> Experiment | None:
        """The experiment users are deciding now; one at a time."""
        return next((e for e in await self.list_experiments(limit=20) if e.status == "running"), None)

    @abc.abstractmethod
    async def count_impressions(self, experiment_id: str) -> int:
        """Interleaved searches logged for the experiment."""

    @abc.abstractmethod
    async def experiment_feedback(self, experiment_id: str) -> list[Feedback]:
        """Feedback given on the experiment's interleaved results (test feedback included)."""

    @abc.abstractmethod
    async def experiment_interactions(self, experiment_id: str) -> list[Interaction]:
        """Opens of the experiment's interleaved results (test ones included)."""
