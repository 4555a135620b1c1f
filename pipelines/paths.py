"""Every location a job derives from its config, in one place (URIs: local paths or s3://...).

    <artifacts.root>/<tenant>/<concept>/<data digest>/<recipe hash>/<base fingerprint>/
                                                         trained concepts (the artifact format)
    <artifacts.work or root/_work>/<job id>/examples/    the job's training examples (Parquet)
                                           /quarantine.json
                                           /runs/<run id>/summary.json, summary.md  (one per submission)
    <artifacts.runs or root/_runs>/                      Ray Train runs (checkpoints)
    <ingest.uploads_uri>/<tenant>/<concept>/             a concept's uploads (lineage)
    <evaluation.eval_sets_uri>/<tenant>/<concept>/       a concept's held-out evaluation set
"""
from __future__ import annotations

from dataclasses import dataclass

from omnipersona.concepts.artifact import artifact_subpath
from omnipersona.identity import ConceptId
from pipelines.config import JobConfig


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


@dataclass(frozen=True)
class JobPaths:
    job_id: str
    artifact_root: str
    work_root: str
    runs_root: str
    uploads_root: str
    eval_sets_root: str | None

    @classmethod
    def of(cls, cfg: JobConfig, job_id: str) -> "JobPaths":
        return cls(job_id, cfg.artifacts.root, cfg.artifacts.work_root, cfg.artifacts.runs_root,
                   cfg.ingest.uploads_uri, cfg.evaluation.eval_sets_uri)

    @property
    def work(self) -> str:
        """This job's folder of derived data."""
        return join(self.work_root, self.job_id)

    @property
    def examples(self) -> str:
        return join(self.work, "examples")

    @property
    def quarantine(self) -> str:
        return join(self.work, "quarantine.json")

    @property
    def runs(self) -> str:
        """One folder per submission of the job: `runs/<MLflow run id>/summary.{json,md}`."""
        return join(self.work, "runs")

    def summary_json(self, run_id: str) -> str:
        return join(self.runs, run_id, "summary.json")

    def summary_markdown(self, run_id: str) -> str:
        return join(self.runs, run_id, "summary.md")

    def artifact(self, concept: ConceptId, data_digest: str, recipe_hash: str, base_fingerprint: str) -> str:
        """A trained concept: its data, recipe and base identify it (`artifact_subpath`)."""
        return join(self.artifact_root, artifact_subpath(concept, data_digest, recipe_hash, base_fingerprint))

    def uploads(self, concept: ConceptId) -> str:
        return join(self.uploads_root, concept.key)

    def eval_set(self, concept: ConceptId) -> str | None:
        return join(self.eval_sets_root, concept.key) if self.eval_sets_root else None
