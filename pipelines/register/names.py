"""Tag keys, aliases and filter strings the MLflow registry stage writes, in one place.

Registered model names and URIs come from `omnipersona.identity.ConceptId` (``<prefix>.<tenant>.<concept>``);
its name rule keeps them valid for MLflow and safe to quote inside filter strings.
"""
from __future__ import annotations

import re

from omnipersona.identity import NAME_PATTERN, ConceptId

# Digests, config hashes and job ids go into filter strings: no quotes, no backslashes.
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"

# Tags on model versions and logged models (also used as search keys).
TAG_TENANT = "tenant"
TAG_CONCEPT = "concept"
TAG_DATA_DIGEST = "data_digest"
TAG_CONFIG_HASH = "config_hash"
TAG_BASE_FINGERPRINT = "base_fingerprint"
TAG_BASE_MODEL_ID = "base_model_id"
TAG_JOB_ID = "job_id"
TAG_JOB_RUN_ID = "job_run_id"  # the job's MLflow run (the version's own run is its registration run, a child)
TAG_GATE = "gate"  # "passed" | "failed" | "not_evaluated"
TAG_GATE_REASONS = "gate_reasons"
TAG_PREVIOUS_CHAMPION = "previous_champion"  # on a promoted version: the champion it replaced
TAG_ROLLED_BACK_AT = "rolled_back_at"
TAG_LAST_ROLLBACK = "last_rollback"  # on the registered model: "<from> -> <to>"

# Tags on the job run.
RUN_TAG_JOB_ID = "omnipersona.job_id"
RUN_TAG_SUBMISSION_TOKEN = "omnipersona.submission_token"  # tells this submission's run from its retried creates
RUN_TAG_SNAPSHOT_URI = "omnipersona.snapshot_uri"
RUN_TAG_SNAPSHOT_DIGEST = "omnipersona.snapshot_digest"
RUN_TAG_CONFIG_HASH = "omnipersona.config_hash"
RUN_TAG_CODE_VERSION = "omnipersona.code_version"
RUN_TAG_BASE_MODEL_ID = "omnipersona.base_model_id"
RUN_TAG_BASE_FINGERPRINT = "omnipersona.base_fingerprint"
RUN_TAG_ZERO_STAGE = "omnipersona.zero_stage"
RUN_TAG_RAY_SUBMISSION_ID = "omnipersona.ray_submission_id"

# Tags on a concept's registration run: a child of the job run (MLflow's `mlflow.parentRunId`), one per
# registered concept, holding the concept's logged model link, metrics, pictures and dataset input.
# Deleting the concept deletes these runs (and `mlflow gc` their rows): the only run-level records
# that name the concept.
RUN_TAG_TENANT = "omnipersona.tenant"
RUN_TAG_CONCEPT = "omnipersona.concept"
RUN_TAG_DATA_URI = "omnipersona.data_uri"  # the concept's upload folder (lineage)
RUN_TAG_DATA_DIGEST = "omnipersona.data_digest"
RUN_TAG_DATASET_NAME = "omnipersona.dataset_name"  # the opaque name of its MLflow dataset input
RUN_TAG_CREATE_TOKEN = "omnipersona.create_token"  # tells this run from a retried create

LOGGED_MODEL_TYPE = "omnipersona-concept"


def checked_token(value: str, what: str) -> str:
    """A digest or hash that is safe to put in a filter string."""
    if not isinstance(value, str) or not TOKEN_PATTERN.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: expected 1-128 characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'")
    return value


def version_filter(name: str, data_digest: str, config_hash: str, base_fingerprint: str) -> str:
    """Filter string matching the model versions trained from this data, with this config, on this base."""
    return (
        f"name = '{name}' AND tags.{TAG_DATA_DIGEST} = '{checked_token(data_digest, 'data digest')}' "
        f"AND tags.{TAG_CONFIG_HASH} = '{checked_token(config_hash, 'config hash')}' "
        f"AND tags.{TAG_BASE_FINGERPRINT} = '{checked_token(base_fingerprint, 'base fingerprint')}'"
    )


def version_matches(version, data_digest: str, config_hash: str, base_fingerprint: str) -> bool:
    """Whether a model version was trained from this data, with this config, on this base: what
    `version_filter` asks the server, checked on a version already read (batched lookups)."""
    tags = version.tags or {}
    return (tags.get(TAG_DATA_DIGEST), tags.get(TAG_CONFIG_HASH), tags.get(TAG_BASE_FINGERPRINT)) == (
        data_digest, config_hash, base_fingerprint)


# Registered model names (`<prefix>.<tenant>.<concept>`) as `ConceptId.model_name` builds them: safe inside quotes.
MODEL_NAME_PATTERN = re.compile(rf"{NAME_PATTERN}\.{NAME_PATTERN}\.{NAME_PATTERN}")


def names_filter(model_names: list[str]) -> str:
    """Filter string for ``search_model_versions`` over the versions of several registered models
    (``name IN (...)``; names validated, so quoting cannot break)."""
    if not model_names:
        raise ValueError("names_filter needs at least one model name")
    for name in model_names:
        if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"invalid registered model name {name!r}")
    return "name IN (" + ", ".join(f"'{name}'" for name in model_names) + ")"


def logged_model_filter(concept: ConceptId, data_digest: str | None = None, config_hash: str | None = None,
                        base_fingerprint: str | None = None) -> str:
    """Filter string for ``search_logged_models`` over one concept's logged models (validated ids)."""
    parts = [f"tags.{TAG_TENANT} = '{concept.tenant}'", f"tags.{TAG_CONCEPT} = '{concept.concept}'"]
    for tag, value, what in ((TAG_DATA_DIGEST, data_digest, "data digest"), (TAG_CONFIG_HASH, config_hash, "config hash"),
                             (TAG_BASE_FINGERPRINT, base_fingerprint, "base fingerprint")):
        if value is not None:
            parts.append(f"tags.{tag} = '{checked_token(value, what)}'")
    return " AND ".join(parts)


def concept_run_filter(concept: ConceptId) -> str:
    """Filter string for ``search_runs`` over a concept's registration runs (validated ids)."""
    return f"tags.`{RUN_TAG_TENANT}` = '{concept.tenant}' AND tags.`{RUN_TAG_CONCEPT}` = '{concept.concept}'"
