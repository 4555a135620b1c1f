"""`train.warm_start` on the real services (Ray Train with DeepSpeed, SeaweedFS, an MLflow server):
a concept whose user added pictures since its registered version starts from that version's
tokens. Three jobs on one concept: v1 on 3 pictures; then a fourth picture is uploaded and the
concept is trained again, warm (from v1) and, under another job, from scratch. Both new versions
are registered (the warm one says where it started); the warm tokens stay near v1's, the fresh
ones do not (few steps of a small learning rate: where training starts is where it stays).
Break-checked: with the warm tokens not loaded
(`reset_concepts` ignoring them) the warm tokens were as far from v1's as the fresh ones."""
from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

from omnipersona.concepts.artifact import ConceptArtifact, artifact_subpath
from omnipersona.identity import ConceptId
from omnipersona.world import make_concepts
from omnipersona.world.uploads import UploadOptions, write_uploads
from pipelines.config import JobConfig
from pipelines.personalize import run_job
from pipelines.register import names
from pipelines.storage import filesystem_for
from tests.services.job_config import small_job_config
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration


def config(s3, mlflow_uri: str, runs: str, model: str, *, warm: bool) -> dict:
    return small_job_config(s3, "warm", mlflow_uri, runs, model, {
        "ingest": {"gate_holdout_every": 0}, "train": {"recipe": {"lr": 1e-4}, "warm_start": warm}})


def test_a_concept_with_new_pictures_starts_from_its_registered_tokens(
        s3_server, ray_session, mlflow_server, tiny_bagel_dir, tmp_path, monkeypatch):
    for key, value in s3_server.job_env().items():
        monkeypatch.setenv(key, value)
    (concept,) = make_concepts(1, seed=61)
    write_uploads({"acme": [concept]}, tmp_path / "uploads", options=UploadOptions(views=4, edits=1, pool_negatives=4))
    shutil.move(tmp_path / "uploads" / "_negatives", tmp_path / "negatives")
    images = tmp_path / "uploads" / "acme" / concept.name / "images"
    fourth = sorted(images.iterdir())[-1]
    held_back = tmp_path / fourth.name
    shutil.move(fourth, held_back)  # v1 is trained on 3 pictures
    upload_tree(s3_server, tmp_path / "uploads", "warm/uploads")
    upload_tree(s3_server, tmp_path / "negatives", "warm/negatives")
    run = lambda warm, runs: run_job(JobConfig(**config(s3_server, mlflow_server.tracking_uri, str(tmp_path / runs),  # noqa: E731
                                                        str(tiny_bagel_dir), warm=warm)))
    first = run(True, "runs-1")  # warm start on, but nothing registered yet: a fresh start
    assert [c.outcome for c in first.concepts] == ["done"] and "warm start" not in first.concepts[0].why

    s3_server.client().upload_file(str(held_back), s3_server.bucket, f"warm/uploads/acme/{concept.name}/images/{held_back.name}")
    warm = run(True, "runs-2")
    fresh = run(False, "runs-3")
    (w,), (f,) = warm.concepts, fresh.concepts
    assert (w.outcome, f.outcome) == ("done", "done"), (w, f)
    assert "data changed since v1; starts from v1's tokens (warm start)" in w.why, w.why
    assert "warm start" not in f.why, f.why

    def artifact(model_version: str) -> ConceptArtifact:
        """The artifact a registered version names (by its tags), read from S3."""
        v = MlflowClient(mlflow_server.tracking_uri).get_model_version(first.concepts[0].model_name, model_version)
        subpath = artifact_subpath(ConceptId("acme", concept.name), v.tags[names.TAG_DATA_DIGEST],
                                   v.tags[names.TAG_CONFIG_HASH], v.tags[names.TAG_BASE_FINGERPRINT])
        fs, path = filesystem_for(s3_server.uri(f"warm/concepts/{subpath}"), s3_server.storage_config())
        return ConceptArtifact.load(path, filesystem=fs)

    v1, warm_artifact, fresh_artifact = artifact("1"), artifact(w.version), artifact(f.version)
    assert warm_artifact.manifest.extra["warm_start_from"].startswith(f"acme/{concept.name}/{v1.manifest.data_digest}/")
    assert "warm_start_from" not in fresh_artifact.manifest.extra

    def distance(a: ConceptArtifact, b: ConceptArtifact) -> float:
        return float(sum((getattr(a, n) - getattr(b, n)).norm() for n in ("identifier", "und_tokens", "gen_tokens")))

    assert distance(warm_artifact, v1) < 0.1 * distance(fresh_artifact, v1), (distance(warm_artifact, v1), distance(fresh_artifact, v1))
