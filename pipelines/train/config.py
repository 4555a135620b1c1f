"""Typed settings of the train stage (part of the job spec)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from omnipersona.recipe import TrainConfig


class DeepSpeedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zero_stage: int = Field(2, ge=0, le=3)
    # Under ZeRO-3 parameters below this many elements stay whole on every rank: the concept bank
    # (a few hundred thousand elements for a pack) must not be partitioned.
    param_persistence_threshold: int = Field(10_000_000, ge=0)
    bf16: bool = False  # on GPU set true; CPU runs fp32

    def ds_config(self, micro_batch: int = 1) -> dict:
        cfg: dict = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": self.bf16},
            # Global-norm clipping would couple the concepts of a pack: leave it off.
            "gradient_clipping": 0.0,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.zero_stage == 3:
            cfg["zero_optimization"].update(
                stage3_param_persistence_threshold=self.param_persistence_threshold,
                stage3_prefetch_bucket_size=0,
            )
        return cfg


class ScalingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(1, ge=0)
    # Custom Ray resources each training worker takes, e.g. {"trainer_slot": 1} on nodes started with
    # `ray start --resources='{"trainer_slot": 1}'`: pins workers to the nodes meant for training.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How Ray places the workers' bundles over nodes (Ray Train's ScalingConfig)")


class EarlyStoppingConfig(BaseModel):
    """`train.early_stopping`: a per-concept stop on a held-out loss during training (off by default).

    The held-out examples are the gate's: the ingest epoch(s) training leaves out
    (`pipelines.ingest.holdout.gate_epochs`: planned from the images `ingest.gate_holdout_every`
    holds out, or fresh augmentations of the training images for a concept with none to spare; with
    that rule off and `ingest.epochs` > 1, the last epoch). A job with no such epoch has no held-out
    signal: every concept then trains all its steps (logged, and its manifest says so)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Stop each concept when its held-out loss stops improving")
    check_every: int = Field(50, ge=1, description="Optimizer steps between held-out checks (also one after the "
                             "last step)")
    patience: int = Field(3, ge=1, description="Checks in a row without improvement after which a concept stops")
    min_delta: float = Field(0.0, ge=0, description="A check improves only when its loss is below the best so far by "
                             "more than this")
    max_examples: int = Field(16, ge=1, description="Held-out examples per concept per check (tasks and answers "
                              "taken in turn)")


class TrainStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def result_hash(self) -> str:
        """What a trained concept's identity takes from the train settings (its artifact path, its
        registry tag): the recipe, plus warm start and early stopping when on (their results differ
        from the plain recipe's)."""
        from omnipersona.concepts.artifact import config_hash

        parts: dict = {}
        if self.warm_start:
            parts["warm_start"] = True
        if self.early_stopping.enabled:
            parts["early_stopping"] = self.early_stopping.model_dump(mode="json")
        if not parts:
            return config_hash(self.recipe)
        return config_hash({"recipe": self.recipe.model_dump(mode="json"), **parts})

    recipe: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    pack_size: int | None = Field(None, ge=1, description="Concepts per pack; None = the largest pack whose "
                                  "per-worker share of a step fits pack_memory_budget_mb and pack_tokens_per_worker")
    max_pack_size: int = Field(128, ge=1)
    pack_memory_budget_mb: float = Field(512.0, gt=0, description="Per-worker memory the pack may use")
    pack_tokens_per_worker: int | None = Field(
        None, ge=1, description="Tokens each worker processes per step (its share of the pack's examples); the pack "
        "grows with the number of workers so this share does not shrink; None = memory budget only")
    warm_start: bool = Field(False, description="A concept with a registered version (new images, say) starts "
                             "from that version's tokens instead of a fresh initialisation")
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=EarlyStoppingConfig, description="Per-concept early stopping on the gate's held-out examples: a "
        "stopped concept's examples leave the pack's steps, it keeps the tokens of its best check, the pack ends when "
        "every concept has stopped (docs/training.md)")
    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints")
    progress_interval_s: float = Field(10.0, ge=2, description="Seconds between progress reports of steps "
                                       "(lines in the job log); a pack's first step and its checkpoints are always reported")
