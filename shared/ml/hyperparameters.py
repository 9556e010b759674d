"""What one training request may set (command line, admin API): light, so the CLI starts fast."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.settings import Precision


class Hyperparameters(BaseModel):
    """Values one training request may set (command line, admin API); bounds keep a typo harmless.

    Each is a field of `TrainConfig` (its default: the trainer's setting); None leaves it to the setting.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=100, description="passes over the training pairs")
    batch_size: int | None = Field(default=None, ge=1, le=1024, description="pairs per step")
    learning_rate: float | None = Field(default=None, gt=0, le=0.01, description="AdamW's peak learning rate")
    warmup_ratio: float | None = Field(default=None, ge=0, le=0.5, description="share of steps warming up")
    # transformers seeds numpy with it
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="seed of the run")
    early_stopping_patience: int | None = Field(default=None, ge=0, le=100,
                                                description="epochs without progress before stopping; 0: off")
    auto: bool | None = Field(default=None,
                              description="epochs and learning rate from the data size (the guide's advice)")
    precision: Precision | None = Field(default=None, description="fp32, bf16, fp16 or auto")

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
