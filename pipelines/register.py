"""Registry stage: concept artifacts into MLflow, with lineage, aliases and a promotion gate.

What one batch job leaves in MLflow (see docs/registry.md):
- one run per job (run name = job id) holding the job's tags, sample pictures and lineage;
- per concept, one LoggedModel (a pyfunc wrapper around the artifact folder) with its metrics;
- per concept, one registered model ``<prefix>.<tenant>.<concept>``: a version per distinct
  (data digest, config hash), alias ``candidate`` on the newest, ``champion`` on the one serving.

Every call goes through an explicit ``MlflowClient`` (no global tracking URI). Calls are retried on
connection errors and 5xx/429 answers, never on 4xx logic errors; creations check for an existing
object first and again after a failed attempt, so a retry never duplicates a run or a version.
"""
from __future__ import annotations

import importlib.metadata
import logging
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import mlflow
import requests
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from omnipersona.concepts.artifact import MANIFEST_FILE, TENSORS_FILE, ConceptArtifact
from pipelines import registry_names as names

log = logging.getLogger(__name__)
T = TypeVar("T")

CONCEPT_ARTIFACT_KEY = "concept"  # the pyfunc artifact holding the concept folder
IMAGE_NAME_PATTERN = re.compile(r"[^A-Za-z0-9_-]+")


# ---------------------------------------------------------------- retries


class RetryPolicy(BaseModel):
    """Exponential backoff for transient MLflow failures (on top of MLflow's own HTTP retries)."""

    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(5, ge=1)
    initial_delay_s: float = Field(0.5, ge=0)
    max_delay_s: float = Field(10.0, ge=0)

    def delays(self) -> list[float]:
        return [min(self.initial_delay_s * 2**i, self.max_delay_s) for i in range(self.attempts - 1)]


def is_transient(error: BaseException) -> bool:
    """Connection trouble or a server-side failure: worth another try. 4xx answers are not."""
    if isinstance(error, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return False


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Run ``fn``; on a transient error wait and try again, up to ``policy.attempts`` times."""
    for delay in [*policy.delays(), None]:
        try:
            return fn()
        except Exception as e:
            if delay is None or not is_transient(e):
                raise
            log.warning("MLflow call %s failed (%s); retrying in %.1f s", what, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def create_once(
    find: Callable[[], T | None], create: Callable[[], T], policy: RetryPolicy, what: str
) -> tuple[T, bool]:
    """Find-or-create that never duplicates: look before creating, and look again after a failed
    attempt (the server may have applied a create whose answer got lost). Returns (obj, created)."""
    found = call_with_retries(find, policy, f"find {what}")
    if found is not None:
        return found, False
    for delay in [*policy.delays(), None]:
        try:
            return create(), True
        except Exception as e:
            if delay is None or not is_transient(e):
                raise
            log.warning("creating %s failed (%s); checking and retrying in %.1f s", what, e, delay)
            time.sleep(delay)
            found = call_with_retries(find, policy, f"find {what}")
            if found is not None:
                return found, False
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- gate


class GateDecision(BaseModel):
    passed: bool
    reasons: list[str] = Field(default_factory=list)


class GateConfig(BaseModel):
    """Promotion gate: every listed metric must be present and within its bound.

    YAML example: ``{minimums: {recognition_accuracy: 0.6}, maximums: {loss_text: 2.0}}``.
    An empty gate passes everything.
    """

    model_config = ConfigDict(extra="forbid")
    minimums: dict[str, float] = Field(default_factory=dict)  # metric >= bound
    maximums: dict[str, float] = Field(default_factory=dict)  # metric <= bound

    def evaluate(self, metrics: dict[str, float]) -> GateDecision:
        reasons = []
        for key, bound in sorted(self.minimums.items()):
            if key not in metrics:
                reasons.append(f"{key} missing (needs >= {bound})")
            elif not metrics[key] >= bound:
                reasons.append(f"{key}={metrics[key]:.4g} < {bound}")
        for key, bound in sorted(self.maximums.items()):
            if key not in metrics:
                reasons.append(f"{key} missing (needs <= {bound})")
            elif not metrics[key] <= bound:
                reasons.append(f"{key}={metrics[key]:.4g} > {bound}")
        return GateDecision(passed=not reasons, reasons=reasons)


# ---------------------------------------------------------------- job run


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


# ---------------------------------------------------------------- registration


@dataclass(frozen=True)
class RegistrationResult:
    status: Literal["registered", "already_registered"]
    model_name: str
    version: str
    model_id: str | None
    promoted: bool
    gate: GateDecision | None


class ConceptArtifactModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper that carries a concept artifact folder; it holds tokens, not a runnable model.

    ``predict`` answers with the concept's manifest (JSON); generation needs the base model and
    ``omnipersona.infer``. ``load_context`` validates the artifact on load.
    """

    def load_context(self, context) -> None:
        self.artifact = ConceptArtifact.load(context.artifacts[CONCEPT_ARTIFACT_KEY])

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        return [self.artifact.manifest.to_json() for _ in model_input]


def _pip_requirements() -> list[str]:
    # Explicit (no inference): what reading the artifact needs.
    pins = []
    for package in ("mlflow", "torch", "safetensors", "pydantic"):
        pins.append(f"{package}=={importlib.metadata.version(package)}")
    return pins


def version_model_id(version) -> str | None:
    """The LoggedModel behind a model version. Versions read over REST carry no ``model_id``
    field (MLflow 3.17), but their source is ``models:/<model id>``."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _concept_tags(artifact: ConceptArtifact) -> dict[str, str]:
    """Tags identifying a concept's training inputs, on its logged model and its model version."""
    m = artifact.manifest
    return {
        names.TAG_TENANT: m.tenant,
        names.TAG_CONCEPT: m.concept,
        names.TAG_DATA_DIGEST: m.data_digest,
        names.TAG_CONFIG_HASH: m.training_config_hash,
        names.TAG_BASE_FINGERPRINT: m.base_fingerprint,
        names.TAG_BASE_MODEL_ID: m.base_model_id,
    }


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ConceptRegistry:
    """The MLflow side of a batch job: runs, logged models, versions, aliases."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str = "omnipersona",
        prefix: str = names.DEFAULT_PREFIX,
        retry: RetryPolicy | None = None,
        registry_uri: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        self.experiment_name = experiment_name
        self.prefix = prefix
        self.retry = retry or RetryPolicy()
        self._experiment_id: str | None = None

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call_with_retries(lambda: fn(*args, **kwargs), self.retry, what)

    def model_name(self, tenant: str, concept: str) -> str:
        return names.registered_model_name(tenant, concept, self.prefix)

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            experiment, _ = create_once(
                lambda: self.client.get_experiment_by_name(self.experiment_name),
                lambda: self.client.get_experiment(self.client.create_experiment(self.experiment_name)),
                self.retry,
                f"experiment {self.experiment_name}",
            )
            self._experiment_id = experiment.experiment_id
        return self._experiment_id

    # ------------------------------------------------------------ job runs

    def find_job_run(self, job_id: str) -> str | None:
        runs = self._call(
            "search runs",
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.`{names.RUN_TAG_JOB_ID}` = '{names.checked_token(job_id, 'job id')}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start_job_run(self, spec: JobRunSpec) -> str:
        """The run of this job: created once, reused (and set running again) on a rerun."""
        tags = {
            names.RUN_TAG_JOB_ID: spec.job_id,
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
        run_id, created = create_once(
            lambda: self.find_job_run(spec.job_id),
            lambda: self.client.create_run(self.experiment_id, run_name=spec.job_id, tags=tags).info.run_id,
            self.retry,
            f"run for job {spec.job_id}",
        )
        if not created:
            log.info("reusing run %s of job %s", run_id, spec.job_id)
            self._call("reopen run", self.client.update_run, run_id, status="RUNNING")
        return run_id

    def end_job_run(self, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        self._call("end run", self.client.set_terminated, run_id, status=status)

    # ------------------------------------------------------------ registration

    def find_version(self, name: str, data_digest: str, config_hash: str):
        """The model version trained from this data digest with this config, if any."""
        found = self._call(
            "search versions", self.client.search_model_versions, names.version_filter(name, data_digest, config_hash)
        )
        return min(found, key=lambda v: int(v.version)) if found else None

    def register_concept(
        self,
        run_id: str,
        artifact_path: str | Path,
        *,
        filesystem: Any | None = None,
        metrics: dict[str, float] | None = None,
        images: dict[str, Image.Image] | None = None,
        gate: GateConfig | None = None,
        data_uri: str | None = None,
    ) -> RegistrationResult:
        """Register the artifact at ``artifact_path`` (local, or on ``filesystem``: a pyarrow
        filesystem such as S3) as a new version of its concept's registered model.

        ``metrics`` (evaluation metrics, final losses) are merged over the manifest's metrics and
        feed the ``gate``: ``champion`` moves to the new version only when the gate passes. A
        (tenant, concept, data digest, config hash) that already has a version is skipped.
        ``data_uri`` is the concept's upload folder, recorded as the dataset input (lineage).
        """
        with tempfile.TemporaryDirectory(prefix="omnipersona-register-") as tmp:
            # Validate where it lives (clear errors for missing or corrupt files), then copy.
            ConceptArtifact.load(artifact_path, filesystem=filesystem)
            local_dir = _stage_locally(artifact_path, filesystem, Path(tmp) / CONCEPT_ARTIFACT_KEY)
            artifact = ConceptArtifact.load(local_dir)
            m = artifact.manifest
            name = self.model_name(m.tenant, m.concept)
            all_metrics = {**m.metrics, **(metrics or {})}

            existing = self.find_version(name, m.data_digest, m.training_config_hash)
            if existing is not None:
                log.info(
                    "%s v%s already holds data %s / config %s: skipped",
                    name, existing.version, m.data_digest, m.training_config_hash,
                )
                return RegistrationResult(
                    "already_registered", name, existing.version, version_model_id(existing), False, None
                )

            self._ensure_registered_model(name, m.tenant, m.concept)
            model_id = self._log_concept_model(run_id, local_dir, artifact, all_metrics, images or {}, data_uri)
            decision = gate.evaluate(all_metrics) if gate is not None else None
            version_tags = {
                **_concept_tags(artifact),
                names.TAG_GATE: "not_evaluated" if decision is None else ("passed" if decision.passed else "failed"),
                names.TAG_GATE_REASONS: "; ".join(decision.reasons) if decision else "",
            }
            run_job_id = self._call("get run", self.client.get_run, run_id).data.tags.get(names.RUN_TAG_JOB_ID)
            if run_job_id:
                version_tags[names.TAG_JOB_ID] = run_job_id
            version, _ = create_once(
                lambda: self.find_version(name, m.data_digest, m.training_config_hash),
                lambda: self.client.create_model_version(
                    name, source=f"models:/{model_id}", run_id=run_id, tags=version_tags, model_id=model_id
                ),
                self.retry,
                f"version of {name}",
            )
            self._call(
                "set candidate", self.client.set_registered_model_alias, name, names.CANDIDATE_ALIAS, version.version
            )
            promoted = bool(decision and decision.passed)
            if promoted:
                self.promote(name, version.version)
            elif decision is not None:
                log.info("%s v%s stays a candidate: %s", name, version.version, "; ".join(decision.reasons))
            return RegistrationResult("registered", name, version.version, model_id, promoted, decision)

    def _ensure_registered_model(self, name: str, tenant: str, concept: str) -> None:
        create_once(
            lambda: self._get_registered_model(name),
            lambda: self.client.create_registered_model(
                name, tags={names.TAG_TENANT: tenant, names.TAG_CONCEPT: concept},
                description=f"OmniPersona concept tokens of {tenant}/{concept}",
            ),
            self.retry,
            f"registered model {name}",
        )

    def _get_registered_model(self, name: str):
        try:
            return self.client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _find_logged_model(self, tenant: str, concept: str, data_digest: str, config_hash: str):
        found = self.client.search_logged_models(
            [self.experiment_id],
            filter_string=names.logged_model_filter(tenant, concept, data_digest, config_hash),
            max_results=50,
        )
        ready = [lm for lm in found if lm.status == LoggedModelStatus.READY]
        return ready[0] if ready else None

    def _log_concept_model(
        self,
        run_id: str,
        local_dir: Path,
        artifact: ConceptArtifact,
        metrics: dict[str, float],
        images: dict[str, Image.Image],
        data_uri: str | None,
    ) -> str:
        """The LoggedModel of this artifact: reused when an earlier attempt finished logging it
        (exported and logged, but never registered), else logged now. Returns its model id."""
        m = artifact.manifest
        existing = self._call(
            "find logged model", self._find_logged_model, m.tenant, m.concept, m.data_digest, m.training_config_hash
        )
        if existing is not None:
            return existing.model_id
        params = {
            "display_name": m.display_name,
            "class_word": m.class_word,
            "mode": artifact.mode,
            "num_und_tokens": str(artifact.num_und_tokens),
            "num_gen_tokens": str(artifact.num_gen_tokens),
            "hidden_size": str(artifact.hidden_size),
            "format_version": m.format_version,
        }
        # A half-logged model from a crashed attempt stays PENDING and is never matched above.
        model = self._call(
            "create logged model",
            self.client.create_logged_model,
            self.experiment_id,
            name=names.logged_model_name(m.tenant, m.concept),
            source_run_id=run_id,
            tags=_concept_tags(artifact),
            params=params,
            model_type=names.LOGGED_MODEL_TYPE,
        )
        with tempfile.TemporaryDirectory(prefix="omnipersona-pyfunc-") as tmp:
            package = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                path=str(package),
                python_model=ConceptArtifactModel(),
                artifacts={CONCEPT_ARTIFACT_KEY: str(local_dir)},
                pip_requirements=_pip_requirements(),
                metadata={"concept_id": m.concept_id, "format_version": m.format_version},
                mlflow_model=Model(
                    artifact_path=model.artifact_location,
                    model_uuid=model.model_id,
                    run_id=run_id,
                    model_id=model.model_id,
                ),
            )
            self._call("upload model", self.client.log_model_artifacts, model.model_id, str(package))
        self._call("link model", self.client.log_outputs, run_id, [LoggedModelOutput(model.model_id, step=0)])

        self._log_lineage(run_id, artifact, data_uri)
        now_ms = int(time.time() * 1000)
        model_metrics = [
            Metric(key, float(value), now_ms, 0, model_id=model.model_id, dataset_name=m.concept_id,
                   dataset_digest=m.data_digest, run_id=run_id)
            for key, value in sorted(metrics.items())
        ]
        if model_metrics:
            self._call("log metrics", self.client.log_batch, run_id, metrics=model_metrics)
        for image_name, image in sorted(images.items()):
            safe = IMAGE_NAME_PATTERN.sub("_", image_name).strip("_") or "image"
            artifact_file = f"concepts/{m.tenant}/{m.concept}/{m.data_digest}/{safe}.png"
            self._call("log image", self.client.log_image, run_id, image, artifact_file=artifact_file)
        self._call("finalize model", self.client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def _log_lineage(self, run_id: str, artifact: ConceptArtifact, data_uri: str | None) -> None:
        """Record the concept's training data (by URI and digest) as a dataset input of the run."""
        m = artifact.manifest
        if data_uri is None:
            snapshot = self._call("get run", self.client.get_run, run_id).data.tags.get(names.RUN_TAG_SNAPSHOT_URI)
            data_uri = f"{snapshot.rstrip('/')}/{m.tenant}/{m.concept}" if snapshot else None
        if data_uri is None:
            log.warning("no data URI for %s: dataset lineage not recorded", m.concept_id)
            return
        try:
            source = resolve_dataset_source(data_uri)
        except MlflowException as e:
            log.warning("cannot record lineage for %s from %s: %s", m.concept_id, data_uri, e)
            return
        # MLflow caps dataset digests at 36 characters; the full digest stays in the version tags.
        dataset = MetaDataset(source, name=m.concept_id, digest=m.data_digest[:36])
        # The client API takes the entity; this is how mlflow.log_input converts it too.
        self._call(
            "log dataset",
            self.client.log_inputs,
            run_id,
            datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])],
        )

    # ------------------------------------------------------------ aliases

    def _alias_version(self, name: str, alias: str):
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def champion_version(self, name: str) -> str | None:
        version = self._call("get champion", self._alias_version, name, names.CHAMPION_ALIAS)
        return version.version if version is not None else None

    def promote(self, name: str, version: str | int) -> None:
        """Point ``champion`` at ``version``, remembering the champion it replaces."""
        version = str(version)
        current = self.champion_version(name)
        if current == version:
            return
        if current is not None:
            self._call(
                "tag previous champion",
                self.client.set_model_version_tag, name, version, names.TAG_PREVIOUS_CHAMPION, current,
            )
        self._call("set champion", self.client.set_registered_model_alias, name, names.CHAMPION_ALIAS, version)
        log.info("%s: champion %s -> %s", name, current, version)

    def rollback(self, name: str) -> str:
        """Move ``champion`` back to the champion it replaced; returns that version."""
        current = self._call("get champion", self._alias_version, name, names.CHAMPION_ALIAS)
        if current is None:
            raise LookupError(f"{name} has no champion to roll back")
        previous = current.tags.get(names.TAG_PREVIOUS_CHAMPION)
        if not previous:
            raise LookupError(f"{name} v{current.version} replaced no earlier champion: nothing to roll back to")
        self._call("get version", self.client.get_model_version, name, previous)  # fails clearly if deleted
        self._call("set champion", self.client.set_registered_model_alias, name, names.CHAMPION_ALIAS, previous)
        self._call(
            "tag rolled back",
            self.client.set_model_version_tag, name, current.version, names.TAG_ROLLED_BACK_AT, _now_iso(),
        )
        self._call(
            "tag rollback",
            self.client.set_registered_model_tag, name, names.TAG_LAST_ROLLBACK, f"{current.version} -> {previous}",
        )
        log.info("%s: rolled champion back %s -> %s", name, current.version, previous)
        return previous

    # ------------------------------------------------------------ lookup and deletion

    def download(self, tenant: str, concept: str, dst_dir: str | Path, alias: str = names.CHAMPION_ALIAS) -> Path:
        """Download the version behind ``models:/<name>@<alias>`` and return the concept artifact
        folder inside it (load it with ``ConceptArtifact.load(folder, expected_fingerprint=...)``)."""
        name = self.model_name(tenant, concept)
        version = self._call("resolve alias", self._alias_version, name, alias)
        if version is None:
            raise LookupError(f"models:/{name}@{alias} does not exist")
        # Resolve the alias with our client: MLflow's models:/ resolution would use the global
        # registry URI, not this registry's.
        source = self._call("download uri", self.client.get_model_version_download_uri, name, version.version)
        local = self._call(
            "download",
            mlflow.artifacts.download_artifacts,
            artifact_uri=source,
            dst_path=str(dst_dir),
            tracking_uri=self.tracking_uri,
        )
        pyfunc_conf = Model.load(Path(local)).flavors["python_function"]
        return Path(local) / pyfunc_conf["artifacts"][CONCEPT_ARTIFACT_KEY]["path"]

    def delete_concept(self, tenant: str, concept: str) -> list[str]:
        """Delete the concept's registered model (all versions and aliases) and its logged
        models; returns the deleted logged-model ids. Artifacts go with the next ``mlflow gc``."""
        name = self.model_name(tenant, concept)
        versions = self._call("list versions", self.client.search_model_versions, f"name = '{name}'")
        model_ids = {version_model_id(v) for v in versions} - {None}
        logged = self._call(
            "list logged models",
            self.client.search_logged_models,
            [self.experiment_id],
            filter_string=names.logged_model_filter(tenant, concept),
        )
        model_ids |= {lm.model_id for lm in logged}
        if self._call("get registered model", self._get_registered_model, name) is not None:
            self._call("delete registered model", self.client.delete_registered_model, name)
        for model_id in sorted(model_ids):
            self._call("delete logged model", self.client.delete_logged_model, model_id)
        return sorted(model_ids)


def _stage_locally(artifact_path: str | Path, filesystem: Any | None, dest: Path) -> Path:
    """A byte-exact local copy of the artifact's files (MLflow uploads from local files)."""
    from pyarrow import fs as pafs

    source_fs = filesystem or pafs.LocalFileSystem()
    source = str(artifact_path).rstrip("/") if filesystem is not None else Path(artifact_path).resolve().as_posix()
    dest.mkdir(parents=True)
    for file_name in (TENSORS_FILE, MANIFEST_FILE):
        pafs.copy_files(
            f"{source}/{file_name}",
            str(dest / file_name),
            source_filesystem=source_fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
    return dest
