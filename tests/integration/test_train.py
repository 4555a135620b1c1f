"""Train stage: Ray Train + DeepSpeed ZeRO on 2 CPU workers, data from a real S3 server via ingest."""
import json
import shutil
from datetime import datetime

import pytest
import torch

from omnipersona.concepts.artifact import ConceptArtifact, artifact_subpath
from omnipersona.training import TrainConfig
from omnipersona.world import make_concepts
from omnipersona.world.uploads import UploadOptions, write_uploads
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.dataset import build_ingest
from pipelines.storage import filesystem_for
from pipelines.train.config import DeepSpeedConfig, ScalingSettings, TrainStageConfig
from pipelines.train.example_store import write_examples
from pipelines.train.runner import ConceptSpec
from pipelines.train.stage import run_training
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration
TOKENS = ("identifier", "und_tokens", "gen_tokens", "identifier_output")


@pytest.fixture(scope="module")
def job(s3_server, ray_session, tiny_bagel_dir, tmp_path_factory):
    """12 world concepts of two tenants, uploaded to S3, ingested, examples written back to S3."""
    local = tmp_path_factory.mktemp("train-job")
    concepts = make_concepts(12, seed=11)
    write_uploads({"acme": concepts[:6], "globex": concepts[6:]}, local / "uploads", options=UploadOptions(views=4, edits=1, pool_negatives=8))
    shutil.move(local / "uploads" / "_negatives", local / "negatives")
    upload_tree(s3_server, local / "uploads", "train/uploads")
    upload_tree(s3_server, local / "negatives", "train/negatives")
    storage = s3_server.storage_config()
    cfg = IngestConfig(uploads_uri=s3_server.uri("train/uploads"), negatives_uri=s3_server.uri("train/negatives"),
                       vit_size=32, vae_size=32, samples_per_task=2)
    result = build_ingest(cfg, storage)
    assert len(result.concepts) == 12, result.quarantine
    fs, path = filesystem_for(s3_server.uri("train/examples"), storage)
    write_examples(result.dataset, fs, path)
    specs = [ConceptSpec(c.concept_key, c.display_name, c.class_word, c.data_digest) for c in result.concepts]
    return dict(specs=specs, storage=storage, examples=s3_server.uri("train/examples"), model=str(tiny_bagel_dir),
                runs=str(local / "runs"), server=s3_server)


def stage_config(zero: int, pack_size: int = 4) -> TrainStageConfig:
    return TrainStageConfig(
        recipe=TrainConfig(steps=4, batch_size=2, lr=0.03, num_und_tokens=4, num_gen_tokens=4, vit_size=32, vae_size=32),
        deepspeed=DeepSpeedConfig(zero_stage=zero),
        scaling=ScalingSettings(num_workers=2, cpus_per_worker=1),
        pack_size=pack_size,
        checkpoint_every=2,
    )


def train(job, job_id, root, cfg, specs=None, fail_after_steps=None):
    return run_training(job_id=job_id, concepts=specs or job["specs"], model_uri=job["model"], examples_uri=job["examples"],
                        artifact_root=job["server"].uri(root), run_storage_uri=job["runs"], storage=job["storage"], cfg=cfg,
                        hidden_size=64, num_layers=2, fail_after_steps=fail_after_steps)


def load_all(job, root, specs=None):
    fs, base = filesystem_for(job["server"].uri(root), job["storage"])
    out = {}
    for s in specs or job["specs"]:
        out[s.concept_key] = ConceptArtifact.load(f"{base}/{artifact_subpath(s.tenant, s.concept, s.data_digest)}", filesystem=fs)
    return out


def assert_learned(artifacts):
    for key, art in artifacts.items():
        m = art.manifest.metrics
        assert m["first_batch_loss_after"] < m["first_batch_loss_before"], f"{key}: loss did not fall {m}"
        assert art.manifest.extra["telemetry"]["steps"] == 4


@pytest.fixture(scope="module")
def zero2_run(job):
    result = train(job, "z2", "train/artifacts-z2", stage_config(2))
    return result, load_all(job, "train/artifacts-z2")


def test_zero2_twelve_concepts_in_packs_of_four(zero2_run):
    result, artifacts = zero2_run
    assert result.error is None and [len(p) for p in result.packs] == [4, 4, 4]
    assert len(artifacts) == 12
    assert_learned(artifacts)


def test_zero3_twelve_concepts_in_packs_of_four(job, zero2_run):
    result = train(job, "z3", "train/artifacts-z3", stage_config(3))
    assert result.error is None and len(result.packs) == 3
    artifacts = load_all(job, "train/artifacts-z3")
    assert_learned(artifacts)
    # ZeRO-3 shards differently but computes the same thing.
    for key, art in artifacts.items():
        for name in TOKENS:
            torch.testing.assert_close(getattr(art, name), getattr(zero2_run[1][key], name), atol=1e-4, rtol=1e-3)


def test_rerunning_the_same_job_trains_nothing(job, zero2_run):
    before = {k: a.manifest.created_at for k, a in zero2_run[1].items()}
    result = train(job, "z2", "train/artifacts-z2", stage_config(2))
    assert result.packs == []
    after = {k: a.manifest.created_at for k, a in load_all(job, "train/artifacts-z2").items()}
    assert after == before


def test_killed_worker_resumes_and_matches_uninterrupted_run(job, zero2_run):
    started = datetime.now().astimezone()
    # Rank 1 dies after 8 steps: pack 2, after its mid-pack checkpoint, before its export.
    result = train(job, "fault", "train/artifacts-fault", stage_config(2), fail_after_steps=8)
    assert result.error is None
    artifacts = load_all(job, "train/artifacts-fault")
    assert len(artifacts) == 12
    first_pack = set(result.packs[0])
    created = {k: a.manifest.created_at for k, a in artifacts.items()}
    # Pack 1 was exported before the failure and never again; later packs after the restart.
    assert max(created[k] for k in first_pack) < min(created[k] for k in set(created) - first_pack)
    assert all(c > started for c in created.values())
    for key, art in artifacts.items():
        for name in TOKENS:
            torch.testing.assert_close(getattr(art, name), getattr(zero2_run[1][key], name), atol=1e-5, rtol=1e-4)


def test_concept_in_a_pack_matches_concept_alone(job, zero2_run):
    spec = job["specs"][5]
    result = train(job, "alone", "train/artifacts-alone", stage_config(2, pack_size=1), specs=[spec])
    assert result.error is None and result.packs == [[spec.concept_key]]
    alone = load_all(job, "train/artifacts-alone", [spec])[spec.concept_key]
    packed = zero2_run[1][spec.concept_key]
    for name in TOKENS:
        torch.testing.assert_close(getattr(alone, name), getattr(packed, name), atol=1e-5, rtol=1e-4)
