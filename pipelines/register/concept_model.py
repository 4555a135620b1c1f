"""A concept's LoggedModel in MLflow: the pyfunc package around its artifact folder, its metrics,
sample pictures and dataset lineage, all logged in the concept's own registration run.

The registration run is a child of the job run (tag ``mlflow.parentRunId``): one per registered
concept, so per-concept metrics never overwrite each other on the job run, and deleting a concept
deletes exactly its runs. Nothing that outlives the run names the concept: its MLflow dataset (a
row MLflow keeps after ``mlflow gc``) gets an opaque random name and the uploads root as source;
the concept's upload folder and the dataset name are tags of the run."""
from __future__ import annotations

import importlib.metadata
import logging
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from PIL import Image

from omnipersona.concepts.artifact import MANIFEST_FILE, TENSORS_FILE, ConceptArtifact
from pipelines.register import names
from pipelines.register.connection import MlflowConnection

log = logging.getLogger(__name__)

CONCEPT_ARTIFACT_KEY = "concept"  # the pyfunc artifact holding the concept folder
IMAGE_NAME_PATTERN = re.compile(r"[^A-Za-z0-9_-]+")


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
    return [f"{package}=={importlib.metadata.version(package)}" for package in ("mlflow", "torch", "safetensors", "pydantic")]


def concept_tags(artifact: ConceptArtifact) -> dict[str, str]:
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


def find_logged_model(mlflow_: MlflowConnection, artifact: ConceptArtifact):
    """The READY logged model of this artifact's (concept, data, config), if an earlier attempt made one.
    A half-logged model from a crashed attempt stays PENDING and is never matched."""
    m = artifact.manifest
    found = mlflow_.client.search_logged_models(
        [mlflow_.experiment_id],
        filter_string=names.logged_model_filter(m.id, m.data_digest, m.training_config_hash, m.base_fingerprint),
        max_results=50,
    )
    ready = [lm for lm in found if lm.status == LoggedModelStatus.READY]
    return ready[0] if ready else None


@dataclass(frozen=True)
class LoggedConcept:
    model_id: str
    run_id: str | None  # the registration run that logged it (the model's source run)


def log_concept_model(
    mlflow_: MlflowConnection,
    job_run_id: str,
    local_dir: Path,
    artifact: ConceptArtifact,
    metrics: dict[str, float],
    images: dict[str, Image.Image],
    data_uri: str | None,
) -> LoggedConcept:
    """The LoggedModel of this artifact: reused when an earlier attempt finished logging it
    (exported and logged, but never registered), else logged now in a new registration run under
    the job run ``job_run_id``."""
    m = artifact.manifest
    client = mlflow_.client
    existing = mlflow_.call("find logged model", find_logged_model, mlflow_, artifact)
    if existing is not None:
        return LoggedConcept(existing.model_id, existing.source_run_id)
    if data_uri is None:
        snapshot = mlflow_.call("get run", client.get_run, job_run_id).data.tags.get(names.RUN_TAG_SNAPSHOT_URI)
        data_uri = f"{snapshot.rstrip('/')}/{m.id.key}" if snapshot else None
    dataset_name = f"concept-data-{uuid.uuid4().hex[:16]}"
    experiment_id = mlflow_.call("get run", client.get_run, job_run_id).info.experiment_id
    run_id = start_concept_run(mlflow_, experiment_id, job_run_id, artifact, data_uri, dataset_name)
    try:
        model_id = _log_model(mlflow_, experiment_id, run_id, local_dir, artifact, metrics, images, data_uri, dataset_name)
    except BaseException:
        mlflow_.call("end run", client.set_terminated, run_id, status="FAILED")
        raise
    mlflow_.call("end run", client.set_terminated, run_id, status="FINISHED")
    return LoggedConcept(model_id, run_id)


def start_concept_run(mlflow_: MlflowConnection, experiment_id: str, job_run_id: str, artifact: ConceptArtifact,
                      data_uri: str | None, dataset_name: str) -> str:
    """A new registration run for this concept, nested under the job run (created once, even when
    the create call is retried)."""
    m = artifact.manifest
    token = uuid.uuid4().hex
    tags = {
        MLFLOW_PARENT_RUN_ID: job_run_id,
        names.RUN_TAG_TENANT: m.tenant,
        names.RUN_TAG_CONCEPT: m.concept,
        names.RUN_TAG_DATA_DIGEST: m.data_digest,
        names.RUN_TAG_DATASET_NAME: dataset_name,
        names.RUN_TAG_CREATE_TOKEN: token,
    }
    if data_uri:
        tags[names.RUN_TAG_DATA_URI] = data_uri
    client = mlflow_.client

    def find() -> str | None:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{names.RUN_TAG_CREATE_TOKEN}` = '{token}'",
                                  max_results=1)
        return runs[0].info.run_id if runs else None

    run_id, _ = mlflow_.create_once(
        find,
        lambda: client.create_run(experiment_id, run_name=m.id.logged_model_name(), tags=tags).info.run_id,
        f"registration run of {m.concept_id}",
    )
    return run_id


def _log_model(mlflow_: MlflowConnection, experiment_id: str, run_id: str, local_dir: Path, artifact: ConceptArtifact,
               metrics: dict[str, float], images: dict[str, Image.Image], data_uri: str | None, dataset_name: str) -> str:
    m = artifact.manifest
    client = mlflow_.client
    params = {
        "display_name": m.display_name,
        "class_word": m.class_word,
        "mode": artifact.mode,
        "num_und_tokens": str(artifact.num_und_tokens),
        "num_gen_tokens": str(artifact.num_gen_tokens),
        "hidden_size": str(artifact.hidden_size),
        "format_version": m.format_version,
    }
    model = mlflow_.call(
        "create logged model",
        client.create_logged_model,
        experiment_id,
        name=m.id.logged_model_name(),
        source_run_id=run_id,
        tags=concept_tags(artifact),
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
                artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id, model_id=model.model_id
            ),
        )
        mlflow_.call("upload model", client.log_model_artifacts, model.model_id, str(package))
    mlflow_.call("link model", client.log_outputs, run_id, [LoggedModelOutput(model.model_id, step=0)])

    lineage = _log_lineage(mlflow_, run_id, artifact, data_uri, dataset_name)
    now_ms = int(time.time() * 1000)
    model_metrics = [
        Metric(key, float(value), now_ms, 0, model_id=model.model_id, run_id=run_id,
               dataset_name=dataset_name if lineage else None, dataset_digest=dataset_digest(m) if lineage else None)
        for key, value in sorted(metrics.items())
    ]
    if model_metrics:
        mlflow_.call("log metrics", client.log_batch, run_id, metrics=model_metrics)
    for image_name, image in sorted(images.items()):
        safe = IMAGE_NAME_PATTERN.sub("_", image_name).strip("_") or "image"
        mlflow_.call("log image", client.log_image, run_id, image, artifact_file=f"{PICTURES_DIR}/{safe}.png")
    mlflow_.call("finalize model", client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
    return model.model_id


PICTURES_DIR = "pictures"  # a registration run's sample pictures


def concept_pictures_prefix(concept) -> str:
    """Where job runs logged a concept's sample pictures before registration runs (read by deletion)."""
    return f"concepts/{concept.tenant}/{concept.concept}"


def dataset_digest(manifest) -> str:
    # MLflow caps dataset digests at 36 characters; the full digest stays in the tags.
    return manifest.data_digest[:36]


def uploads_root(data_uri: str, concept) -> str | None:
    """The uploads root above a concept's upload folder ``<root>/<tenant>/<concept>``, or None when
    ``data_uri`` has another layout."""
    suffix = f"/{concept.key}"
    stripped = data_uri.rstrip("/")
    return stripped[: -len(suffix)] if stripped.endswith(suffix) and len(stripped) > len(suffix) else None


def _log_lineage(mlflow_: MlflowConnection, run_id: str, artifact: ConceptArtifact, data_uri: str | None,
                 dataset_name: str) -> bool:
    """Record the concept's training data as a dataset input of its registration run: an opaque
    name, the data digest and the uploads root (MLflow keeps dataset rows after the run is gone, so
    they must not name the concept; the run's tags say which folder). Returns whether it did."""
    m = artifact.manifest
    root = uploads_root(data_uri, m.id) if data_uri else None
    if root is None:
        log.warning("no uploads root for %s (data URI %s): dataset lineage not recorded", m.concept_id, data_uri)
        return False
    try:
        source = resolve_dataset_source(root)
    except MlflowException as e:
        log.warning("cannot record lineage for %s from %s: %s", m.concept_id, root, e)
        return False
    dataset = MetaDataset(source, name=dataset_name, digest=dataset_digest(m))
    # The client API takes the entity; this is how mlflow.log_input converts it too.
    mlflow_.call(
        "log dataset",
        mlflow_.client.log_inputs,
        run_id,
        datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])],
    )
    return True


def stage_locally(artifact_path: str | Path, filesystem: Any | None, dest: Path) -> Path:
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
