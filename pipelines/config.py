"""The job spec: one typed config that flows from the entrypoint into every stage.

Loaded from YAML; any field can be overridden from the environment with the `OMNIPERSONA_` prefix
and `__` between nested names (secrets belong there, not in the YAML):

    OMNIPERSONA_STORAGE__SECRET_KEY=...  OMNIPERSONA_MLFLOW__TRACKING_URI=http://mlflow:5000

Settings come from this object only. The environment is read elsewhere just for what belongs to
the process, not to the job: `RAY_ADDRESS` (the cluster to join) and `TORCH_EXTENSIONS_DIR`
(DeepSpeed's op cache, passed on to the Ray workers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from omnipersona.evaluation.metric_names import unknown_metric
from omnipersona.evaluation.plugins import check_plugin
from pipelines.evaluate.gate import Gate
from pipelines.ingest.config import IngestConfig
from pipelines.storage import StorageConfig
from pipelines.train.config import TrainStageConfig


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field(description="BAGEL checkpoint folder (local path or s3://...); 'world': the world base shipped "
                     "with the package (32-pixel pictures); 'tiny' builds the tiny test model")
    tiny_cache: str = Field("~/.cache/omnipersona/tiny-bagel", description="Where 'tiny' is built")


class ArtifactSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="Concept artifacts: <root>/<tenant>/<concept>/<digest>/")
    work: str | None = Field(None, description="Derived data (examples, summaries); default <root>/_work")
    runs: str | None = Field(None, description="Ray Train run storage (checkpoints); default <root>/_runs")
    lease_ttl_s: float = Field(
        300.0, ge=5,
        description="How long a job's lease on a concept artifact (and on its job id) lasts without renewal: the job "
        "renews it every third of this while it runs; another job waits for it, or takes it over once it expired "
        "(<work>/_leases; docs/faults.md, 'Service faults')",
    )

    @property
    def work_root(self) -> str:
        return self.work or f"{self.root.rstrip('/')}/_work"

    @property
    def leases_root(self) -> str:
        """Leases of running jobs on job ids and concept artifacts (`pipelines.lease`)."""
        return f"{self.work_root.rstrip('/')}/_leases"

    @property
    def runs_root(self) -> str:
        return self.runs or f"{self.root.rstrip('/')}/_runs"


class MlflowSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: str
    experiment: str = "omnipersona"
    registry_prefix: str = "omnipersona"
    registration_threads: int = Field(
        4, ge=1, le=64,
        description="Concepts registered at once (`ConceptRegistry.register_many`): a registration is ~23 requests "
        "to the MLflow server (docs/registry.md), whose latency threads overlap; a concept is still registered once. With a `sqlite:` "
        "tracking URI (no server: one writer) concepts register one at a time",
    )


class EvaluationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_examples: int = Field(16, ge=1, description="Held-out examples per concept for the gate metrics")
    sample_images: bool = Field(True, description="Log a sample generation and edit per concept to MLflow")
    sampling_steps: int = Field(12, ge=2)
    actors: int = Field(0, ge=0, description="Ray actors that evaluate concepts, each loading the base once (the driver "
                        "then loads no weights); 0 = the driver evaluates, one concept at a time")
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per evaluation actor (1 on a GPU cluster)")
    eval_sets_uri: str | None = Field(
        None,
        description="Held-out evaluation sets, one per concept under `<uri>/<tenant>/<concept>/`, read by `eval_set_reader`. "
        "A concept that has one is scored by the OmniPBench-style harness (omnipersona.evaluation) instead of on its held-out "
        "images (ingest.gate_holdout_every): recognition over held-out views and hard negatives, text QA and VQA in held-out wording, and with "
        "a `judge` generation, PARG and editing; the gate can bound any of these metrics.",
    )
    eval_set_reader: str = Field(
        "world",
        description="Reads a concept's eval set: `world` (the manifests omnipersona.world.uploads.write_eval_sets writes) "
        "or 'package.module:function' (see omnipersona.evaluation.plugins)",
    )
    judge: str | None = Field(
        None,
        description="Judges generated pictures: `world` (the world-trained probe, built once, then cached) or "
        "'package.module:factory' (see omnipersona.evaluation.plugins); None: no picture-judged metrics",
    )

    @field_validator("eval_set_reader")
    @classmethod
    def _known_reader(cls, ref: str) -> str:
        return check_plugin("eval_set_reader", ref)

    @field_validator("judge")
    @classmethod
    def _known_judge(cls, ref: str | None) -> str | None:
        return None if ref is None else check_plugin("judge", ref)


class RaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="None: join the cluster we run in (ray job submit) or start a local one")
    num_cpus: int | None = Field(None, description="Logical CPUs of a locally started Ray (oversubscribe on small machines)")


class JobConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNIPERSONA_", env_nested_delimiter="__", extra="forbid")

    job_id: str | None = Field(None, description="Default: derived from the snapshot digest and config hash")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ingest: IngestConfig
    model: ModelSettings
    train: TrainStageConfig = Field(default_factory=TrainStageConfig)
    artifacts: ArtifactSettings
    mlflow: MlflowSettings
    gate: Gate = Field(default_factory=Gate, description="Promotion gate: champion moves only when it passes")
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    hard_negative_features: Literal["vision_encoder", "colour_histogram"] = "vision_encoder"

    @field_validator("gate")
    @classmethod
    def _gate_without_gains(cls, gate: Gate) -> Gate:
        if gate.minimum_gains:
            raise ValueError("gate.minimum_gains needs untrained-token baselines, which the job does not compute: "
                             "bound the metrics with gate.minimums / gate.maximums")
        return gate

    @model_validator(mode="after")
    def _gate_metrics_exist(self) -> "JobConfig":
        """A misspelt gate metric would only show after training, as every concept failing the gate."""
        problems = []
        for bound in ("minimums", "maximums"):
            for name in getattr(self.gate, bound):
                why = unknown_metric(name, self.evaluation.eval_sets_uri is not None, self.evaluation.judge)
                if why:
                    problems.append(f"gate.{bound}.{name}: {why}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _one_size_per_picture_kind(self) -> "JobConfig":
        """Ingest prepares the pictures at `ingest.vit_size` / `vae_size`; training builds its samples at
        the recipe's. A recipe that names no size takes ingest's; one that names another is refused
        (the deployed config once trained a 7B base on 64 px samples of 224 / 512 px pictures)."""
        recipe = self.train.recipe
        sizes = ("vit_size", "vae_size")
        inherited = {f: getattr(self.ingest, f) for f in sizes if f not in recipe.model_fields_set}
        if inherited:
            self.train.recipe = recipe = recipe.model_copy(update=inherited)
        clashes = [f"train.recipe.{f} is {getattr(recipe, f)} but ingest.{f} is {getattr(self.ingest, f)}"
                   for f in sizes if getattr(recipe, f) != getattr(self.ingest, f)]
        if clashes:
            raise ValueError("; ".join(clashes) + ": training would resize every picture ingest prepared. "
                             "Leave train.recipe's sizes out (they follow ingest) or make them equal")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file (deployments inject endpoints and secrets).
        return env_settings, init_settings, file_secret_settings

    @classmethod
    def from_yaml(cls, path: str | Path) -> "JobConfig":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"job config {path} does not exist (see docs/job-config.md for the format)")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"job config {path} must hold a mapping at the top level")
        return cls(**data)
