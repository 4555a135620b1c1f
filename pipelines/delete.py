"""Removing a concept completely: artifacts, derived data, registry entries and MLflow files.

A user's right to be forgotten: after `delete_concept` nothing trained from or derived from the
concept's uploads remains in the artifact store, the job work folders or MLflow.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from omnipersona.identity import ConceptId
from pipelines.register import ConceptRegistry
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


def delete_concept(
    concept: ConceptId,
    *,
    artifact_root: str,
    work_root: str,
    registry: ConceptRegistry,
    storage: StorageConfig | None = None,
    uploads_uri: str | None = None,
) -> DeletionReport:
    """Delete everything made from the concept; with `uploads_uri`, its raw uploads too."""
    key = concept.key
    report = DeletionReport(concept_key=key)
    if uploads_uri is not None:
        ufs, uroot = filesystem_for(uploads_uri, storage)
        upload_dir = f"{uroot.rstrip('/')}/{key}"
        if ufs.get_file_info(upload_dir).type != pafs.FileType.NotFound:
            delete_prefix(ufs, upload_dir)
            report.upload_paths.append(upload_dir)
    fs, root = filesystem_for(artifact_root, storage)
    concept_dir = f"{root.rstrip('/')}/{key}"
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
    report.mlflow_files = registry.delete_files(concept, registry.logged_model_ids(concept))
    report.logged_models = registry.delete_concept(concept)
    log.info("deleted %s: %d artifact folders, %d derived folders, %d logged models, %d MLflow file sets",
             key, len(report.artifact_paths), len(report.derived_paths), len(report.logged_models), len(report.mlflow_files))
    return report
