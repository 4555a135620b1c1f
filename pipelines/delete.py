"""Removing a concept completely: artifacts, derived data, registry entries and MLflow files.

A user's right to be forgotten: after `delete_concept` nothing trained from or derived from the
concept's uploads remains in the artifact store, the job work folders or MLflow.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from pipelines.register import ConceptRegistry
from pipelines.registry_names import logged_model_filter
from pipelines.storage import StorageConfig, delete_prefix, filesystem_for
from pipelines.train.example_store import PARTITION, concept_part

log = logging.getLogger("omnipersona.delete")


@dataclass
class DeletionReport:
    concept_key: str
    upload_paths: list[str] = field(default_factory=list)
    artifact_paths: list[str] = field(default_factory=list)
    derived_paths: list[str] = field(default_factory=list)
    logged_models: list[str] = field(default_factory=list)
    mlflow_files: list[str] = field(default_factory=list)


def _delete_mlflow_files(registry: ConceptRegistry, tenant: str, concept: str, model_ids: list[str]) -> list[str]:
    """The logged models' packages and the job runs' sample pictures of this concept."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    removed = []
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)  # mlflow-artifacts:/ URIs resolve through it
    try:
        locations = []
        for model_id in model_ids:
            try:
                locations.append(registry.client.get_logged_model(model_id).artifact_location)
            except Exception:  # noqa: BLE001 - already gone
                continue
        runs = registry.client.search_runs([registry.experiment_id], max_results=10_000)
        for run in runs:
            prefix = f"concepts/{tenant}/{concept}"
            if registry.client.list_artifacts(run.info.run_id, prefix):
                locations.append(f"{run.info.artifact_uri.rstrip('/')}/{prefix}")
        for location in locations:
            get_artifact_repository(location).delete_artifacts()
            removed.append(location)
    finally:
        mlflow.set_tracking_uri(previous)
    return removed


def delete_concept(
    tenant: str,
    concept: str,
    *,
    artifact_root: str,
    work_root: str,
    registry: ConceptRegistry,
    storage: StorageConfig | None = None,
    uploads_uri: str | None = None,
) -> DeletionReport:
    """Delete everything made from the concept; with `uploads_uri`, its raw uploads too."""
    key = f"{tenant}/{concept}"
    report = DeletionReport(concept_key=key)
    if uploads_uri is not None:
        ufs, uroot = filesystem_for(uploads_uri, storage)
        upload_dir = f"{uroot.rstrip('/')}/{tenant}/{concept}"
        if ufs.get_file_info(upload_dir).type != pafs.FileType.NotFound:
            delete_prefix(ufs, upload_dir)
            report.upload_paths.append(upload_dir)
    fs, root = filesystem_for(artifact_root, storage)
    concept_dir = f"{root.rstrip('/')}/{tenant}/{concept}"
    if fs.get_file_info(concept_dir).type != pafs.FileType.NotFound:
        delete_prefix(fs, concept_dir)
        report.artifact_paths.append(concept_dir)
    # Derived data: the concept's example partitions in every job's work folder.
    wfs, work = filesystem_for(work_root, storage)
    if wfs.get_file_info(work).type == pafs.FileType.Directory:
        part = f"{PARTITION}={concept_part(key)}"
        for info in wfs.get_file_info(pafs.FileSelector(work, recursive=False)):
            candidate = f"{info.path}/examples/{part}"
            if info.type == pafs.FileType.Directory and wfs.get_file_info(candidate).type != pafs.FileType.NotFound:
                delete_prefix(wfs, candidate)
                report.derived_paths.append(candidate)
    # Registry last: if it fails, the concept can still be found there and the deletion retried.
    logged = registry.client.search_logged_models([registry.experiment_id], filter_string=logged_model_filter(tenant, concept))
    model_ids = sorted({m.model_id for m in logged})
    report.mlflow_files = _delete_mlflow_files(registry, tenant, concept, model_ids)
    report.logged_models = registry.delete_concept(tenant, concept)
    log.info("deleted %s: %d artifact folders, %d derived folders, %d logged models, %d MLflow file sets",
             key, len(report.artifact_paths), len(report.derived_paths), len(report.logged_models), len(report.mlflow_files))
    return report
