"""A concept's LoggedModel in MLflow: the pyfunc package around its artifact folder, its metrics,
sample pictures and the dataset lineage of the run that logged it."""
from __future__ import annotations

import importlib.metadata
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
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


def log_concept_model(
    mlflow_: MlflowConnection,
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
    client = mlflow_.client
    existing = mlflow_.call("find logged model", find_logged_model, mlflow_, artifact)
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
    model = mlflow_.call(
        "create logged model",
        client.create_logged_model,
        mlflow_.experiment_id,
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

    _log_lineage(mlflow_, run_id, artifact, data_uri)
    now_ms = int(time.time() * 1000)
    model_metrics = [
        Metric(key, float(value), now_ms, 0, model_id=model.model_id, dataset_name=m.concept_id,
               dataset_digest=m.data_digest, run_id=run_id)
        for key, value in sorted(metrics.items())
    ]
    if model_metrics:
        mlflow_.call("log metrics", client.log_batch, run_id, metrics=model_metrics)
    for image_name, image in sorted(images.items()):
        safe = IMAGE_NAME_PATTERN.sub("_", image_name).strip("_") or "image"
        artifact_file = f"{concept_pictures_prefix(m.id)}/{m.data_digest}/{safe}.png"
        mlflow_.call("log image", client.log_image, run_id, image, artifact_file=artifact_file)
    mlflow_.call("finalize model", client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
    return model.model_id


def concept_pictures_prefix(concept) -> str:
    """Where a concept's sample pictures live inside a job run's artifacts."""
    return f"concepts/{concept.tenant}/{concept.concept}"


def _log_lineage(mlflow_: MlflowConnection, run_id: str, artifact: ConceptArtifact, data_uri: str | None) -> None:
    """Record the concept's training data (by URI and digest) as a dataset input of the run."""
    m = artifact.manifest
    if data_uri is None:
        snapshot = mlflow_.call("get run", mlflow_.client.get_run, run_id).data.tags.get(names.RUN_TAG_SNAPSHOT_URI)
        data_uri = f"{snapshot.rstrip('/')}/{m.id.key}" if snapshot else None
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
    mlflow_.call(
        "log dataset",
        mlflow_.client.log_inputs,
        run_id,
        datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])],
    )


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
