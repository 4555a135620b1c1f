"""The MLflow run of a batch job: created once per job id, its tags, its summary."""
from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from pipelines.register import names
from pipelines.register.connection import MlflowConnection

log = logging.getLogger(__name__)


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
        return run_id

    def log_summary(self, run_id: str, summary_json: str, summary_markdown: str, counts: dict[str, int]) -> None:
        """The job's summary as run files, and its outcome counts as `concepts_<outcome>` metrics."""
        client = self.mlflow.client
        self.mlflow.call("log summary", client.log_text, run_id, summary_json, "summary/summary.json")
        self.mlflow.call("log summary", client.log_text, run_id, summary_markdown, "summary/summary.md")
        for outcome, count in counts.items():
            self.mlflow.call("log counts", client.log_metric, run_id, f"concepts_{outcome}", count)

    def end(self, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        self.mlflow.call("end run", self.mlflow.client.set_terminated, run_id, status=status)
