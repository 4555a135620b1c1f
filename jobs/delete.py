"""`omnipersona delete`: remove a concept from every store a job writes."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

DELETE_COMPLETE = 0
DELETE_INCOMPLETE = 2
DELETE_NOT_FOUND = 4
DELETE_EXIT_CODES = f"""exit codes:
  {DELETE_COMPLETE}  deleted: nothing of the concept is left in any store (MLflow's rows of the
     soft-deleted runs and logged models wait for `mlflow gc`, listed in the output)
  {DELETE_INCOMPLETE}  could not complete: a store failed or could not be reached; the output names
     what is left (stores, paths, ids). Run the same command again: every step is idempotent.
     (argparse also exits with 2 on invalid arguments.)
  {DELETE_NOT_FOUND}  nothing of the concept was found in any store (never there, or already deleted)
"""


def run(args) -> int:
    from omnipersona.identity import ConceptId
    from pipelines.config import JobConfig
    from pipelines.delete import awaiting_gc, concept_stores, delete_concept, describe, folder_store
    from pipelines.register import ConceptRegistry, MlflowConnection

    try:
        concept = ConceptId(args.tenant, args.concept)
    except ValueError as e:
        print(f"omnipersona delete: {e}", file=sys.stderr)
        return DELETE_INCOMPLETE
    # MLflow's own HTTP retries back off for minutes against a server that is down; the registry's
    # RetryPolicy already retries (seconds). Failing fast is fine here: the report says what is left
    # and running delete again finishes the job.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = JobConfig.from_yaml(args.config)
    registry = ConceptRegistry(MlflowConnection(cfg.mlflow.tracking_uri, experiment_name=cfg.mlflow.experiment),
                               prefix=cfg.mlflow.registry_prefix)
    stores = concept_stores(concept, registry=registry, artifact_root=cfg.artifacts.root, work_root=cfg.artifacts.work_root,
                            runs_root=cfg.artifacts.runs_root, storage=cfg.storage, eval_sets_uri=cfg.evaluation.eval_sets_uri,
                            uploads_uri=cfg.ingest.uploads_uri if args.purge_uploads else None)
    report = delete_concept(concept, stores)
    mlflow_steps = [s for s in report.steps if s.store.startswith("mlflow.")]
    if not any(s.not_attempted or any(e.startswith("could not list") for e in s.errors) for s in mlflow_steps):
        try:
            report.awaiting_gc = awaiting_gc(registry, concept, report)
        except Exception as e:  # noqa: BLE001 - informational only; the deletion itself is reported above
            report.awaiting_gc = {"could not list": [describe(e)]}
    if not args.purge_uploads:
        uploads = folder_store("uploads", "", cfg.ingest.uploads_uri, concept.key, cfg.storage)
        try:
            report.uploads_kept = next((f.label for f in uploads.find()), None)
        except OSError as e:
            report.uploads_kept = f"unknown ({describe(e)})"
    print(report.to_text(), flush=True)
    if args.json:
        print(report.to_json(), flush=True)
    if not report.complete:
        return DELETE_INCOMPLETE
    return DELETE_COMPLETE if report.found_anything else DELETE_NOT_FOUND


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "delete", parents=[common], help="remove everything made from a concept (MLflow, artifacts, checkpoints, examples, summaries)",
        description=textwrap.fill(
            "Remove a concept from every store a job writes (docs/deployment.md, 'Deleting a concept'): the "
            "registered model, logged models and registration runs in MLflow (files purged, runs and models "
            "soft-deleted until `mlflow gc`), artifacts, held-out eval set, Ray Train checkpoints and training "
            "examples of the jobs that had it, and its rows in summaries and quarantine reports. Prints what was "
            "deleted and what is left.", 79),
        epilog=DELETE_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--tenant", required=True, help="the tenant the concept belongs to")
    s.add_argument("--concept", required=True, help="the concept's folder name under the tenant")
    s.add_argument("--config", required=True, help="the job YAML whose stores to clean (OMNIPERSONA_* env vars override it)")
    s.add_argument("--purge-uploads", action="store_true",
                   help="also delete the concept's raw uploads (without it the next job trains the concept again)")
    s.add_argument("--json", action="store_true", help="also print the report as one line of JSON")
    s.set_defaults(fn=run)
