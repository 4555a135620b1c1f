"""The training recipe: what `train.recipe` in a job config holds, hashed into every artifact.

Torch-free on purpose: validating a job config must not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class LossWeights:
    lambda_img: float = 1.0
    lambda_edit: float = 1.0


class TrainConfig(BaseModel):
    """Defaults: the paper's recipe (AdamW, 2000 steps, batch 8 per concept); lr 1e-3 as peers use on token rows."""

    # A misspelt key (`setps: 7`) must fail, not train 2000 steps.
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1, description="examples per concept per optimizer step")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0, description="linear LR warmup at the start of every pack (0: constant LR)")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    lambda_img: float = 1.0
    lambda_edit: float = 1.0
    num_und_tokens: int = Field(16, ge=1)
    num_gen_tokens: int = Field(16, ge=0)
    mode: str = Field("decoupled", pattern="^(decoupled|shared)$")
    init: str = Field("image", pattern="^(image|class_word|random)$")
    seed: int = 0
    vit_size: int = 64
    vae_size: int = 64

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(self.lambda_img, self.lambda_edit)
