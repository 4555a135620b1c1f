"""Registry stage: concept artifacts into MLflow, with lineage, aliases and the promotion gate.

What one batch job leaves in MLflow (see docs/registry.md):
- one run per job (run name = job id) holding the job's tags, summary, sample pictures and lineage
  (`job_runs`);
- per concept, one LoggedModel (a pyfunc wrapper around the artifact folder) with its metrics
  (`concept_model`);
- per concept, one registered model ``<prefix>.<tenant>.<concept>``: a version per distinct
  (data digest, config hash), aliases ``candidate`` and ``champion`` (`registry`).

Every call goes through one explicit client (`connection`) and is retried on connection errors and
5xx/429 answers, never on 4xx logic errors (`retry`).
"""
from pipelines.register.connection import MlflowConnection
from pipelines.register.job_runs import JobRuns, JobRunSpec
from pipelines.register.registry import ConceptRegistry, RegistrationResult
from pipelines.register.retry import RetryPolicy, call_with_retries, create_once

__all__ = [
    "ConceptRegistry", "JobRunSpec", "JobRuns", "MlflowConnection", "RegistrationResult", "RetryPolicy",
    "call_with_retries", "create_once",
]
