"""The MLflow run of a batch job: created once per submission, its tags (job id, Ray submission id,
lineage), its params (the recipe and the job's settings), its summary; and the training curves of
the concepts it registers, each in the concept's own registration run (a child of the job run)."""
from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import time
import uuid
from pathlib import Path
from typing import Literal

from mlflow.entities import Metric, Param
from pydantic import BaseModel, ConfigDict

from pipelines.register import names
from pipelines.register.connection import MlflowConnection

log = logging.getLogger(__name__)

CURVE_METRIC = "train_loss"  # a concept's loss per step; `train_loss_<term>` for each loss term
# MLflow's limits per log_batch call (1000 metrics, 100 params) and per param value (6000 characters).
MAX_METRICS_PER_CALL, MAX_PARAMS_PER_CALL, MAX_PARAM_CHARS = 1000, 100, 6000


class JobRunSpec(BaseModel):
    """What identifies a batch job run; every field becomes a run tag."""

    model_config = ConfigDict(extra="forbid")
    job_id: str
    snapshot_uri: str
    snapshot_digest: str
    config_hash: str
    base_model_id: str
    base_fingerprint: str
    zero_stage: int
    ray_submission_id: str | None = None
    code_version: str | None = None  # default: resolve_code_version()
    params: dict[str, str] = {}  # the recipe and the job's settings (`pipelines.personalize.job_params`)


def resolve_code_version() -> str:
    """The git commit of this checkout when there is one, else the installed package version."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        if result.returncode == 0 and result.stdout.strip():
            return f"git:{result.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"omnipersona=={importlib.metadata.version('omnipersona')}"


class JobRuns:
    """One MLflow run per submission of a job: a rerun of the same job id gets a run of its own (the
    first run's record stays as it was), tagged with the job id so a job's runs can be listed."""

    def __init__(self, mlflow: MlflowConnection) -> None:
        self.mlflow = mlflow

    def _search(self, filter_string: str, max_results: int):
        return self.mlflow.call("search runs", self.mlflow.client.search_runs, [self.mlflow.experiment_id],
                                filter_string=filter_string, max_results=max_results, order_by=["attributes.start_time ASC"])

    def of_job(self, job_id: str) -> list[str]:
        """The ids of a job's runs, oldest first."""
        runs = self._search(f"tags.`{names.RUN_TAG_JOB_ID}` = '{names.checked_token(job_id, 'job id')}'", 1000)
        return [r.info.run_id for r in runs]

    def job_of_submission(self, submission_id: str) -> str | None:
        """The job id of the run that a Ray submission started (None when there is none)."""
        runs = self._search(f"tags.`{names.RUN_TAG_RAY_SUBMISSION_ID}` = '{names.checked_token(submission_id, 'submission id')}'", 1)
        return runs[0].data.tags.get(names.RUN_TAG_JOB_ID) if runs else None

    def start(self, spec: JobRunSpec) -> str:
        """A new run for this submission. Created once even when the create call is retried: a
        token of this submission tags it, and a retry first looks for that token."""
        token = uuid.uuid4().hex
        tags = {
            names.RUN_TAG_JOB_ID: spec.job_id,
            names.RUN_TAG_SUBMISSION_TOKEN: token,
            names.RUN_TAG_SNAPSHOT_URI: spec.snapshot_uri,
            names.RUN_TAG_SNAPSHOT_DIGEST: spec.snapshot_digest,
            names.RUN_TAG_CONFIG_HASH: spec.config_hash,
            names.RUN_TAG_CODE_VERSION: spec.code_version or resolve_code_version(),
            names.RUN_TAG_BASE_MODEL_ID: spec.base_model_id,
            names.RUN_TAG_BASE_FINGERPRINT: spec.base_fingerprint,
            names.RUN_TAG_ZERO_STAGE: str(spec.zero_stage),
        }
        if spec.ray_submission_id:
            tags[names.RUN_TAG_RAY_SUBMISSION_ID] = spec.ray_submission_id

        def find() -> str | None:
            runs = self._search(f"tags.`{names.RUN_TAG_SUBMISSION_TOKEN}` = '{token}'", 1)
            return runs[0].info.run_id if runs else None

        run_id, _ = self.mlflow.create_once(
            find,
            lambda: self.mlflow.client.create_run(self.mlflow.experiment_id, run_name=spec.job_id, tags=tags).info.run_id,
            f"run for job {spec.job_id}",
        )
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(spec.params.items())]
        for i in range(0, len(params), MAX_PARAMS_PER_CALL):
            # Logging the same value again (a retried call) is allowed; params never change afterwards.
            self.mlflow.call("log params", self.mlflow.client.log_batch, run_id, params=params[i:i + MAX_PARAMS_PER_CALL])
        return run_id

    def source_run_of(self, model_id: str) -> str | None:
        """The run that logged a LoggedModel (a concept's registration run)."""
        return self.mlflow.call("get logged model", self.mlflow.client.get_logged_model, model_id).source_run_id

    def log_training_curves(self, run_id: str | None, history: dict[str, list], fresh: bool = False) -> int:
        """A concept's per-step training losses (`Telemetry.history`: `step`, `loss`, one column per
        loss term) as step metrics `train_loss` and `train_loss_<term>` of `run_id`. Skipped when
        the run has them already (a registration retried with the logged model of an earlier
        attempt); a ``fresh`` run (made by this registration) is not asked. Returns how many values
        were logged."""
        steps = history.get("step") or []
        if run_id is None or not steps:
            return 0
        client = self.mlflow.client
        if not fresh and self.mlflow.call("get metric history", client.get_metric_history, run_id, CURVE_METRIC):
            return 0
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(CURVE_METRIC if column == "loss" else f"{CURVE_METRIC}_{column}", float(value), now_ms, int(step))
            for column, values in sorted(history.items()) if column != "step"
            for step, value in zip(steps, values) if value is not None
        ]
        for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
            self.mlflow.call("log training curves", client.log_batch, run_id, metrics=metrics[i:i + MAX_METRICS_PER_CALL])
        return len(metrics)

    def log_summary(self, run_id: str, summary_json: str, summary_markdown: str, counts: dict[str, int]) -> None:
        """The job's summary as run files, and its outcome counts as `concepts_<outcome>` metrics."""
        client = self.mlflow.client
        self.mlflow.call("log summary", client.log_text, run_id, summary_json, "summary/summary.json")
        self.mlflow.call("log summary", client.log_text, run_id, summary_markdown, "summary/summary.md")
        for outcome, count in counts.items():
            self.mlflow.call("log counts", client.log_metric, run_id, f"concepts_{outcome}", count)

    def end(self, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        self.mlflow.call("end run", self.mlflow.client.set_terminated, run_id, status=status)
