"""Train stage: Ray Train + DeepSpeed ZeRO on CPU workers, data from a real S3 server via ingest.

The recipe warms the LR up over 3 of its 4 steps, so every comparison below also checks that the
schedule runs (and restarts per pack, and continues on resume) on the DeepSpeed path.
"""
import dataclasses
import json
import shutil
from datetime import datetime

import pytest
import torch

from omnipersona.concepts.artifact import ConceptArtifact, config_hash
from omnipersona.concepts.bank import ConceptBank
from omnipersona.concepts.samples import SampleBuilder
from omnipersona.identity import ConceptId
from omnipersona.model.checkpoint import load_bagel
from omnipersona.training import TrainConfig, init_pack_concepts, train_pack
from omnipersona.world import make_concepts
from omnipersona.world.uploads import UploadOptions, write_uploads
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.dataset import build_ingest
from pipelines.storage import filesystem_for, list_files
from pipelines.train.config import DeepSpeedConfig, ScalingSettings, TrainStageConfig
from pipelines.train.example_store import read_pools, write_examples
from pipelines.train.runner import TrainConcept
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
    specs = [TrainConcept(ConceptId.parse(c.concept_key), c.display_name, c.class_word, c.data_digest,
                          config_hash(recipe()), load_bagel(str(tiny_bagel_dir)).fingerprint) for c in result.concepts]
    return dict(specs=specs, storage=storage, examples=s3_server.uri("train/examples"), model=str(tiny_bagel_dir),
                runs=str(local / "runs"), server=s3_server)


def recipe(warmup_steps: int = 3) -> TrainConfig:
    return TrainConfig(steps=4, batch_size=2, lr=0.03, warmup_steps=warmup_steps, num_und_tokens=4, num_gen_tokens=4,
                       vit_size=32, vae_size=32)


def stage_config(zero: int, pack_size: int = 4, workers: int = 2, warmup_steps: int = 3, checkpoint_every: int = 2) -> TrainStageConfig:
    return TrainStageConfig(
        recipe=recipe(warmup_steps),
        deepspeed=DeepSpeedConfig(zero_stage=zero),
        scaling=ScalingSettings(num_workers=workers, cpus_per_worker=1),
        pack_size=pack_size,
        checkpoint_every=checkpoint_every,
    )


def train(job, job_id, root, cfg, specs=None, fail_after_steps=None):
    # A concept is planned for the recipe it trains with (its artifact path names the recipe's hash).
    specs = [dataclasses.replace(s, recipe_hash=config_hash(cfg.recipe)) for s in specs or job["specs"]]
    return run_training(job_id=job_id, concepts=specs, model_uri=job["model"], examples_uri=job["examples"],
                        artifact_root=job["server"].uri(root), run_storage_uri=job["runs"], storage=job["storage"], cfg=cfg,
                        hidden_size=64, num_layers=2, fail_after_steps=fail_after_steps)


def load_all(job, root, specs=None):
    """Every concept's one artifact below `root` (each root holds one recipe's run)."""
    fs, base = filesystem_for(job["server"].uri(root), job["storage"])
    out = {}
    for s in specs or job["specs"]:
        manifests = [f.path for f in list_files(fs, f"{base}/{s.id.key}/{s.data_digest}") if f.path.endswith("/manifest.json")]
        assert len(manifests) == 1, manifests
        out[s.id.key] = ConceptArtifact.load(manifests[0].rsplit("/", 1)[0], filesystem=fs)
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
    # Rank 1 dies after 8 steps: the end of pack 2, before its export. With a checkpoint every step,
    # its step-3 report went through, so its step-2 checkpoint was collected (a worker's report waits
    # for the previous one to be taken): the restart resumes pack 2 mid-way, mid-warmup.
    result = train(job, "fault", "train/artifacts-fault", stage_config(2, checkpoint_every=1), fail_after_steps=8)
    assert result.error is None
    artifacts = load_all(job, "train/artifacts-fault")
    assert len(artifacts) == 12
    resumed_steps = {artifacts[k].manifest.extra["telemetry"]["steps"] for k in result.packs[1]}
    assert resumed_steps <= {1, 2}, f"pack 2 was not resumed mid-pack: steps after the restart {resumed_steps}"
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
    assert result.error is None and result.packs == [[spec.id.key]]
    alone = load_all(job, "train/artifacts-alone", [spec])[spec.id.key]
    packed = zero2_run[1][spec.id.key]
    for name in TOKENS:
        torch.testing.assert_close(getattr(alone, name), getattr(packed, name), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- one trainer, two engines
# The Ray worker (DeepSpeed engine) and `train_pack` (plain-PyTorch engine) run the same pack trainer
# with the same optimizer and LR schedule: on one worker they train a pack to the same tokens.


class OneTrainer:
    """Tokens of one 2-concept pack per path and recipe, each trained once per test module."""

    def __init__(self, job):
        self.job, self.concepts, self.done = job, job["specs"][:2], {}

    def ray(self, zero: int, warmup_steps: int) -> dict[str, dict[str, torch.Tensor]]:
        key = ("ray", zero, warmup_steps)
        if key not in self.done:
            root = f"train/artifacts-one-z{zero}-w{warmup_steps}"
            cfg = stage_config(zero, pack_size=2, workers=1, warmup_steps=warmup_steps, checkpoint_every=4)
            result = train(self.job, f"one-z{zero}-w{warmup_steps}", root, cfg, specs=self.concepts)
            assert result.error is None and len(result.packs) == 1
            arts = load_all(self.job, root, self.concepts)
            self.done[key] = {k: {name: getattr(a, name) for name in TOKENS} for k, a in arts.items()}
        return self.done[key]

    def library(self, warmup_steps: int) -> dict[str, dict[str, torch.Tensor]]:
        key = ("library", warmup_steps)
        if key not in self.done:
            cfg = recipe(warmup_steps)
            bundle = load_bagel(self.job["model"])
            fs, path = filesystem_for(self.job["examples"], self.job["storage"])
            pools = read_pools(fs, path, [c.id.key for c in self.concepts])
            llm = bundle.config.llm
            bank = ConceptBank(len(pools), llm.hidden_size, llm.vocab_size, cfg.num_und_tokens, cfg.num_gen_tokens, cfg.mode)
            builder = SampleBuilder(bundle, bank, cfg.vit_size, cfg.vae_size)
            init_pack_concepts(bank, bundle, pools, [c.class_word for c in self.concepts], cfg, cache=builder.cache)
            train_pack(bundle, bank, pools, cfg, builder=builder)
            self.done[key] = {c.id.key: bank.concept_tensors(slot) for slot, c in enumerate(self.concepts)}
        return self.done[key]


@pytest.fixture(scope="module")
def one_trainer(job):
    return OneTrainer(job)


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k][name] - b[k][name]).abs().max()) for k in a for name in TOKENS)


@pytest.mark.parametrize("zero", [0, 2])
def test_deepspeed_worker_trains_a_pack_to_the_library_paths_tokens(one_trainer, zero):
    ray, library = one_trainer.ray(zero, warmup_steps=3), one_trainer.library(warmup_steps=3)
    assert set(ray) == set(library)
    for key in ray:
        for name in TOKENS:
            torch.testing.assert_close(ray[key][name], library[key][name], atol=1e-5, rtol=0, msg=f"{key} {name}")


def test_a_different_warmup_gives_different_tokens_on_both_paths(one_trainer):
    # Warmup 1 is a constant LR: what a path that ignored the schedule would train.
    assert max_difference(one_trainer.library(3), one_trainer.library(1)) > 1e-3
    assert max_difference(one_trainer.ray(0, 3), one_trainer.ray(0, 1)) > 1e-3
