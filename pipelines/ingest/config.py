"""Typed settings of the ingest stage (part of the job spec)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omnipersona.identity import ConceptId
from omnipersona.tasks import check_task_names

ALL_TASKS: tuple[str, ...] = ("recognition", "vqa", "text_qa", "t2i", "edit")


class AugmentConfig(BaseModel):
    """Mild, identity-preserving augmentation (a personal concept must stay recognisable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_scale: tuple[float, float] = (0.7, 1.0)  # fraction of the image area kept by the random crop
    crop_ratio: tuple[float, float] = (0.9, 1.1)  # crop aspect (w/h) before the square resize
    flip_p: float = Field(default=0.5, ge=0, le=1)
    brightness: float = Field(default=0.1, ge=0, lt=1)  # factor drawn from [1-b, 1+b]
    contrast: float = Field(default=0.1, ge=0, lt=1)
    saturation: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError("crop_ratio must satisfy 0 < low <= high")
        return self


class ValidationLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_images: int = Field(default=2, ge=1, description="Concepts with fewer valid images are skipped.")
    min_side: int = Field(default=32, ge=1)
    max_side: int = Field(default=8192, ge=1)
    # Checked on the header dimensions before any pixel is decoded.
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_file_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_concept_json_bytes: int = Field(default=1024 * 1024, ge=1)


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uploads_uri: str = Field(description="Root holding <tenant>/<concept>/{concept.json, images/...}.")
    negatives_uri: str | None = Field(default=None, description="Shared pool of negative images.")
    allow_empty: bool = Field(
        default=False, description="Let a job whose uploads prefix is empty or missing run (and train nothing) "
        "instead of failing its preflight."
    )
    include: list[str] | None = Field(
        default=None, description='Only these concept keys ("tenant/concept"); None = all.'
    )
    vit_size: int = Field(ge=8, description="Side of the understanding (ViT) input images.")
    vae_size: int = Field(ge=8, description="Side of the generation (VAE) target images.")
    seed: int = 0
    epochs: int = Field(default=1, ge=1, description="Each epoch re-samples and re-augments.")
    samples_per_task: int = Field(default=8, ge=1, description="Per concept, per epoch, per task.")
    tasks: tuple[str, ...] = Field(default=ALL_TASKS, description="Task types to plan examples of (omnipersona.tasks).")
    gate_holdout_every: int = Field(
        default=5, ge=0, description="The gate's own pictures: of a concept's n images, ceil(n / this) (those with the "
        "smallest SHA-256) are kept out of training (and of every concept's negatives) and only the gate's epoch shows "
        "them, never leaving fewer than 3 for training (pipelines/ingest/holdout.py); 0 = off (the gate scores a "
        "held-out ingest epoch). Changing it changes every concept's data digest, so a rerun retrains."
    )
    hard_negative_fraction: float = Field(default=0.5, ge=0, le=1)
    hard_negatives_per_concept: int = Field(default=8, ge=1, description="Size of the mined hard set.")
    negative_candidates: int = Field(
        default=512, ge=1, description="Per concept, at most this many (seeded sample) negative candidates."
    )
    negatives_from_other_tenants: bool = Field(
        default=False, description="Let one tenant's images serve as negatives for another tenant."
    )
    feature_size: int = Field(default=224, ge=8, description="Max side of images given to feature_fn.")
    limits: ValidationLimits = Field(default_factory=ValidationLimits)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    read_threads: int = Field(default=8, ge=1, description="Threads for driver-side small reads.")
    validate_batch_size: int = Field(default=16, ge=1)
    example_batch_size: int = Field(default=32, ge=1)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        check_task_names(tasks)  # unknown to the library: the error names the registered tasks
        from pipelines.ingest.examples import TASK_PLANNERS  # that module imports this one

        unplanned = [t for t in tasks if t not in TASK_PLANNERS]
        if unplanned:
            raise ValueError(f"ingest cannot plan examples of task(s) {unplanned}; it plans: {', '.join(TASK_PLANNERS)}")
        return tasks

    @field_validator("gate_holdout_every")
    @classmethod
    def _holdout_rule(cls, every: int) -> int:
        if every == 1:
            raise ValueError("gate_holdout_every=1 would hold out all but 3 images; use 0 (off) or N >= 2 (1 image in every N)")
        return every

    @model_validator(mode="after")
    def _same_kind_of_storage(self) -> "IngestConfig":
        # Both roots are read through one filesystem (one Ray read), so they must share a scheme.
        if self.negatives_uri is not None and self.uploads_uri.startswith("s3://") != self.negatives_uri.startswith("s3://"):
            raise ValueError("uploads_uri and negatives_uri must both be s3:// or both be local")
        return self

    @model_validator(mode="after")
    def _include_keys_are_safe(self) -> "IngestConfig":
        for key in self.include or []:
            ConceptId.parse(key)  # these become listing prefixes: refuse traversal here
        return self
