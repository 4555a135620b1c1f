"""`train.early_stopping` on the real services (Ray Train with DeepSpeed, SeaweedFS, an MLflow server):
a job of two concepts in one pack, 8 steps, checked every 2 steps on the gate's held-out examples
(`ingest.gate_holdout_every`: one of each concept's 4 pictures). `min_delta` is set so high that
no check after the first improves and patience is 1, so each concept stops at step 4 — the
rule's stop fired by configuration, deterministic on any machine (what stops a concept on real
data is measured in benchmarks/warm_and_early.py). Checked: both concepts stopped at step 4 and
the pack ended there (4 of 8 steps run, the manifests' telemetry and curves end at step 4), their
manifests and the run log record the stop, the held-out loss is a real value over real held-out
examples, the concepts' identity carries the early-stopping settings, and both are registered.
Break-checked: with the workers ignoring the option (`plan_stopper` returning False) the
manifests had no early-stopping record and the test failed (KeyError: 'early_stopping')."""
from __future__ import annotations

import json
import math
import shutil

import pytest
from mlflow import MlflowClient

from omnipersona.concepts.artifact import ConceptArtifact, artifact_subpath, config_hash
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

STEPS = 8


def config(s3, mlflow_uri: str, runs: str, model: str) -> dict:
    return small_job_config(s3, "early", mlflow_uri, runs, model, {
        "ingest": {"gate_holdout_every": 4},
        "train": {"recipe": {"steps": STEPS, "lr": 1e-3}, "pack_size": 2,
                  "early_stopping": {"enabled": True, "check_every": 2, "patience": 1, "min_delta": 1e6, "max_examples": 4}},
    })


def test_each_concept_stops_early_on_its_held_out_loss_and_is_registered(
        s3_server, ray_session, mlflow_server, tiny_bagel_dir, tmp_path, monkeypatch):
    for key, value in s3_server.job_env().items():
        monkeypatch.setenv(key, value)
    concepts = make_concepts(2, seed=71)
    write_uploads({"acme": concepts}, tmp_path / "uploads", options=UploadOptions(views=4, edits=1, pool_negatives=4))
    shutil.move(tmp_path / "uploads" / "_negatives", tmp_path / "negatives")
    upload_tree(s3_server, tmp_path / "uploads", "early/uploads")
    upload_tree(s3_server, tmp_path / "negatives", "early/negatives")
    cfg = JobConfig(**config(s3_server, mlflow_server.tracking_uri, str(tmp_path / "runs"), str(tiny_bagel_dir)))
    summary = run_job(cfg)
    assert [c.outcome for c in summary.concepts] == ["done", "done"], summary.concepts
    client = MlflowClient(mlflow_server.tracking_uri)

    # The concepts' identity carries the early-stopping settings (not the bare recipe's hash).
    assert cfg.train.result_hash() != config_hash(cfg.train.recipe)
    for outcome in summary.concepts:
        version = client.get_model_version(outcome.model_name, outcome.version)  # registered
        assert version.tags[names.TAG_CONFIG_HASH] == cfg.train.result_hash()
        subpath = artifact_subpath(ConceptId.parse(outcome.concept_key), version.tags[names.TAG_DATA_DIGEST],
                                   version.tags[names.TAG_CONFIG_HASH], version.tags[names.TAG_BASE_FINGERPRINT])
        fs, path = filesystem_for(s3_server.uri(f"early/concepts/{subpath}"), s3_server.storage_config())
        manifest = ConceptArtifact.load(path, filesystem=fs).manifest
        record = manifest.extra["early_stopping"]
        assert record["stopped_at_step"] == 4 and record["steps_run"] == 4 and record["steps_saved"] == STEPS - 4, record
        assert record["best_step"] == 2 and [c[0] for c in record["checks"]] == [2, 4], record
        assert record["heldout_examples"] > 0 and math.isfinite(record["best_heldout_loss"]) and record["best_heldout_loss"] > 0
        assert manifest.metrics["early_stop_best_heldout_loss"] == record["best_heldout_loss"]
        assert manifest.extra["telemetry"]["steps"] == 4  # steps this concept really trained
        assert manifest.extra["loss_history"]["step"] == [1, 2, 3, 4]

    # The run log: one early_stop record per concept, and the pack ended at step 4 of 8.
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "log").is_dir()]
    stops = [json.loads(p.read_text()) for p in sorted((run_dir / "log" / "early_stop").iterdir())]
    assert sorted(r["concept"] for r in stops) == sorted(c.concept_key for c in summary.concepts)
    assert {r["stopped_at_step"] for r in stops} == {4}
