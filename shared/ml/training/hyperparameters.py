"""A run's hyperparameters, declared once: light (no torch), so the trainer's CLI starts fast.

Each field of `TrainConfig` names the setting it defaults to (`EDURANKER_NUM_EPOCHS`, ...) and,
with its description and bounds, what one training request may set instead. `Hyperparameters`,
the request's model (admin API body, CLI flags), is derived from those fields: a new
hyperparameter is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from shared.settings import Precision, Settings, from_settings, setting


def hyperparameter(name: str, description: str, **bounds: float) -> Any:
    """A field read from the setting `name` that one request may also set, within `bounds`
    (they keep a typo harmless); the settings themselves are not bounded here."""
    return setting(name, request=Field(default=None, description=description, **bounds))


@dataclass
class TrainConfig:
    """The guide's hyperparameters; `auto` picks them from the data size the way the guide advises.

    `pinned` names the values given for this run explicitly (command line, admin API): `auto`
    leaves those alone.
    """

    epochs: int = hyperparameter("num_epochs", "passes over the training pairs", ge=1, le=100)
    batch_size: int = hyperparameter("batch_size", "pairs per step", ge=1, le=1024)
    learning_rate: float = hyperparameter("learning_rate", "AdamW's peak learning rate", gt=0, le=0.01)
    warmup_ratio: float = hyperparameter("warmup_ratio", "share of steps warming up", ge=0, le=0.5)
    # transformers seeds numpy with it
    seed: int = hyperparameter("seed", "seed of the run", ge=0, le=2**32 - 1)
    early_stopping_patience: int = hyperparameter(
        "train_early_stopping_patience", "epochs without progress before stopping; 0: off", ge=0, le=100)
    auto: bool = hyperparameter("train_auto",
                                "epochs and learning rate from the data size (the guide's advice)")
    precision: Precision = hyperparameter("train_precision", "fp32, bf16, fp16 or auto")
    pinned: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainConfig:
        return from_settings(cls, settings)

    def with_overrides(self, values: dict[str, Any] | RequestValues) -> TrainConfig:
        """This run's explicit values; they win over the settings and over `auto`.

        Raises `pydantic.ValidationError` for unknown names and out-of-range values.
        """
        given = (values if isinstance(values, RequestValues) else Hyperparameters(**values)).given()
        return replace(self, **given, pinned=self.pinned | set(given))

    def for_data_size(self, n_pairs: int) -> TrainConfig:
        """The guide: under 100 pairs 2-3 epochs at 5e-5; over 500 pairs 5-7 epochs at 2e-5."""
        if not self.auto:
            return self
        if n_pairs < 100:
            advice = {"epochs": 3, "learning_rate": 5e-5}
        elif n_pairs > 500:
            advice = {"epochs": 5, "learning_rate": 2e-5}
        else:
            advice = {"epochs": 3, "learning_rate": 2e-5}
        return replace(self, **{k: v for k, v in advice.items() if k not in self.pinned})

    def as_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pinned"}
        return {**values, "pinned": sorted(self.pinned)}


class RequestValues(BaseModel):
    """What `Hyperparameters` adds to its derived fields: nothing unknown, and the values given."""

    model_config = ConfigDict(extra="forbid")

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def request_model(config: type, name: str, doc: str) -> type[RequestValues]:
    """A model with every `hyperparameter` field of the dataclass `config`, optional (None: the setting)."""
    types = get_type_hints(config)
    declared = {f.name: (types[f.name] | None, f.metadata["request"])
                for f in fields(config) if "request" in f.metadata}
    return create_model(name, __base__=RequestValues, __doc__=doc, **declared)


Hyperparameters = request_model(
    TrainConfig, "Hyperparameters",
    "Values one training request may set (command line, admin API); None leaves each to its setting.")
