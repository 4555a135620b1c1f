"""A concept's LoggedModel in MLflow: the pyfunc package around its artifact folder, its metrics,
sample pictures and dataset lineage, all logged in the concept's own registration run.

The registration run is a child of the job run (tag ``mlflow.parentRunId``): one per registered
concept, so per-concept metrics never overwrite each other on the job run, and deleting a concept
deletes exactly its runs. Nothing that outlives the run names the concept: its MLflow dataset (a
row MLflow keeps after ``mlflow gc``) gets an opaque random name and the uploads root as source;
the concept's upload folder and the dataset name are tags of the run.

The logged model is defined by code (MLflow models-from-code): `serving.py` beside this file is the
model, copied into the package; the package holds no pickle. `predict` answers understand /
generate / edit requests for the concept on the base model recorded in its model config."""
from __future__ import annotations

import base64
import functools
import importlib.metadata
import io
import logging
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus, Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from packaging.version import Version
from PIL import Image

from omnipersona.concepts.artifact import MANIFEST_FILE, TENSORS_FILE, ConceptArtifact
from pipelines.register import names
from pipelines.register.connection import MlflowConnection

log = logging.getLogger(__name__)

CONCEPT_ARTIFACT_KEY = "concept"  # the pyfunc artifact holding the concept folder
IMAGE_NAME_PATTERN = re.compile(r"[^A-Za-z0-9_-]+")


SERVING_CODE = Path(__file__).with_name("serving.py")  # the model, defined by code
# The model config recorded at log time; `predict`'s params of the same names override it.
SERVING_DEFAULTS = {"base_model_uri": "", "image_size": 64, "sampling_steps": 50, "replay": True}


def serving_config(base_model_uri: str | None) -> dict[str, Any]:
    """The model config of a concept's served model: the job's base model (where it was trained)."""
    return {**SERVING_DEFAULTS, "base_model_uri": base_model_uri or ""}


def serving_signature(config: dict[str, Any]) -> ModelSignature:
    """Requests (task, prompt, optional base64 picture) -> answers; params default to the model config."""
    kinds = {str: "string", int: "long", bool: "boolean"}
    return ModelSignature(
        inputs=Schema([ColSpec("string", "task"), ColSpec("string", "prompt"), ColSpec("string", "image", required=False)]),
        outputs=Schema([
            ColSpec("string", "answer", required=False),
            ColSpec("double", "yes_probability", required=False),
            ColSpec("string", "image", required=False),
            ColSpec("string", "prompt_used", required=False),
        ]),
        params=ParamSchema([ParamSpec(key, kinds[type(value)], value) for key, value in config.items()]),
    )


@functools.cache
def _example_picture() -> str:
    # The same small grey PNG in every concept's example: encoded once per process.
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def serving_example(display_name: str) -> pd.DataFrame:
    """One request of each task (a small grey PNG for the picture)."""
    picture = _example_picture()
    name = f"<{display_name}>"
    return pd.DataFrame([
        {"task": "understand", "prompt": f"Is {name} in this image?", "image": picture},
        {"task": "generate", "prompt": f"A photo of {name} on a beach.", "image": ""},
        {"task": "edit", "prompt": f"Put {name} on the sofa.", "image": picture},
    ])


def _pin(package: str) -> str:
    # The public version: a local build tag (torch 2.13.0+cpu) names no installable release.
    return f"{package}=={Version(importlib.metadata.version(package)).public}"


@functools.cache
def _pip_requirements() -> tuple[str, ...]:
    # Explicit (no inference): omnipersona brings the code the model runs and pins the rest. Installed
    # versions do not change while a process runs: read once, not per registered concept.
    return tuple(_pin(package) for package in ("omnipersona", "mlflow", "torch"))


def concept_folder(model_dir: str | Path) -> Path:
    """The concept artifact folder inside a downloaded concept model package; `ValueError` when the
    package is not an OmniPersona concept model."""
    flavors = Model.load(Path(model_dir)).flavors
    artifacts = flavors.get("python_function", {}).get("artifacts", {})
    if CONCEPT_ARTIFACT_KEY not in artifacts:
        raise ValueError(f"the model at {model_dir} is not an OmniPersona concept model (no '{CONCEPT_ARTIFACT_KEY}' artifact)")
    return Path(model_dir) / artifacts[CONCEPT_ARTIFACT_KEY]["path"]


def recorded_config(model_dir: str | Path) -> dict[str, Any]:
    """The model config a concept model package recorded at log time (its base model among others)."""
    return dict(Model.load(Path(model_dir)).flavors.get("python_function", {}).get("config") or {})


def _save_package(package: Path, local_dir: Path, artifact: ConceptArtifact, mlflow_model: Model,
                  base_model_uri: str | None) -> None:
    m = artifact.manifest
    config = serving_config(base_model_uri)
    mlflow.pyfunc.save_model(
        path=str(package),
        python_model=str(SERVING_CODE),
        artifacts={CONCEPT_ARTIFACT_KEY: str(local_dir)},
        model_config=config,
        signature=serving_signature(config),
        input_example=serving_example(m.display_name),
        pip_requirements=list(_pip_requirements()),
        metadata={"concept_id": m.concept_id, "format_version": m.format_version},
        mlflow_model=mlflow_model,
    )
    # MLflow records where things were copied from: the code file by absolute path (a Ray working
    # dir under /tmp on the cluster) and the artifact's staging folder. Loading reads only the code
    # file's name and the artifact's path inside the package, and a code model pickles nothing, so
    # keep the package free of this machine's paths and of pickle settings.
    pyfunc = mlflow_model.flavors["python_function"]
    pyfunc["model_code_path"] = SERVING_CODE.name
    pyfunc.pop("cloudpickle_version", None)
    for entry in pyfunc.get("artifacts", {}).values():
        entry.pop("uri", None)
    mlflow_model.save(str(package / "MLmodel"))


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
    fresh: bool = False  # logged now, in a run of its own just made (not an earlier attempt's)


def log_concept_model(
    mlflow_: MlflowConnection,
    job_run_id: str,
    local_dir: Path,
    artifact: ConceptArtifact,
    metrics: dict[str, float],
    images: dict[str, Image.Image],
    data_uri: str | None,
    base_model_uri: str | None = None,
    job_run: Run | None = None,
    earlier_attempts: bool = True,
) -> LoggedConcept:
    """The LoggedModel of this artifact: reused when an earlier attempt finished logging it
    (exported and logged, but never registered; not looked for without ``earlier_attempts``: the
    concept's registered model was created just now, and an attempt creates it before logging),
    else logged now in a new registration run under the job run ``job_run_id`` (``job_run``: that
    run as read once per job, else read here). ``base_model_uri`` (the job's ``model.uri``) is
    recorded in the model config: the base `predict` loads unless its params name another."""
    m = artifact.manifest
    client = mlflow_.client
    existing = mlflow_.call("find logged model", find_logged_model, mlflow_, artifact) if earlier_attempts else None
    if existing is not None:
        return LoggedConcept(existing.model_id, existing.source_run_id)
    job_run = job_run or mlflow_.call("get run", client.get_run, job_run_id)
    if data_uri is None:
        snapshot = job_run.data.tags.get(names.RUN_TAG_SNAPSHOT_URI)
        data_uri = f"{snapshot.rstrip('/')}/{m.id.key}" if snapshot else None
    dataset_name = f"concept-data-{uuid.uuid4().hex[:16]}"
    experiment_id = job_run.info.experiment_id
    run = start_concept_run(mlflow_, experiment_id, job_run_id, artifact, data_uri, dataset_name)
    run_id = run.info.run_id
    try:
        model_id = _log_model(mlflow_, experiment_id, run, local_dir, artifact, metrics, images, data_uri, dataset_name,
                              base_model_uri)
    except BaseException:
        mlflow_.call("end run", client.set_terminated, run_id, status="FAILED")
        raise
    mlflow_.call("end run", client.set_terminated, run_id, status="FINISHED")
    return LoggedConcept(model_id, run_id, fresh=True)


def start_concept_run(mlflow_: MlflowConnection, experiment_id: str, job_run_id: str, artifact: ConceptArtifact,
                      data_uri: str | None, dataset_name: str) -> Run:
    """A new registration run for this concept, nested under the job run (created once, even when
    the create call is retried: its fresh token is searched for only after a failed create)."""
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

    def find() -> Run | None:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{names.RUN_TAG_CREATE_TOKEN}` = '{token}'",
                                  max_results=1)
        return runs[0] if runs else None

    run, _ = mlflow_.create_once(
        find,
        lambda: client.create_run(experiment_id, run_name=m.id.logged_model_name(), tags=tags),
        f"registration run of {m.concept_id}",
        look_first=False,  # a token made just now: nobody has created that run yet
    )
    return run


def _log_model(mlflow_: MlflowConnection, experiment_id: str, run: Run, local_dir: Path, artifact: ConceptArtifact,
               metrics: dict[str, float], images: dict[str, Image.Image], data_uri: str | None, dataset_name: str,
               base_model_uri: str | None) -> str:
    m = artifact.manifest
    client = mlflow_.client
    run_id = run.info.run_id
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
        mlflow_model = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                             model_id=model.model_id)
        _save_package(package, local_dir, artifact, mlflow_model, base_model_uri)
        mlflow_.call("upload model", upload_folder, mlflow_, model.artifact_location, package)
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
    if images:
        with tempfile.TemporaryDirectory(prefix="omnipersona-pictures-") as tmp:
            for image_name, image in sorted(images.items()):
                safe = IMAGE_NAME_PATTERN.sub("_", image_name).strip("_") or "image"
                image.save(Path(tmp) / f"{safe}.png")
            mlflow_.call("log pictures", upload_folder, mlflow_, run.info.artifact_uri, Path(tmp), PICTURES_DIR)
    mlflow_.call("finalize model", client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
    return model.model_id


def upload_folder(mlflow_: MlflowConnection, artifact_uri: str, folder: Path, artifact_path: str | None = None) -> None:
    """Upload a folder's files under ``artifact_uri`` (a run's or a logged model's artifact location,
    as the create call answered it). `MlflowClient.log_artifacts` / `log_model_artifacts` would
    read the run or the model again first to learn that location: a request per concept each."""
    get_artifact_repository(artifact_uri, tracking_uri=mlflow_.tracking_uri).log_artifacts(str(folder), artifact_path)


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
