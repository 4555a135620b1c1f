"""Train stage: Ray Train + DeepSpeed ZeRO on CPU workers, data from a real S3 server via ingest.

The recipe warms the LR up over 3 of its 4 steps, so every comparison below also checks that the
schedule runs (and restarts per pack, and continues on resume) on the DeepSpeed path. Its batch of
3 examples per concept splits unevenly over 2 workers (2 + 1) and 3 ways over 3.
"""
import dataclasses
import shutil

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
from pipelines.train.faults import FaultSpec
from pipelines.train.run_log import read_run_log
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
    return TrainConfig(steps=4, batch_size=3, lr=0.03, warmup_steps=warmup_steps, num_und_tokens=4, num_gen_tokens=4,
                       vit_size=32, vae_size=32)


# Under ZeRO-3, parameters above this many elements are partitioned for real (released to each rank's
# shard outside forward): the tiny backbone's largest matrices (embeddings, LM head, MLPs), not the rest.
ZERO3_PERSISTENCE = 5000


def stage_config(zero: int, pack_size: int = 4, workers: int = 2, warmup_steps: int = 3, checkpoint_every: int = 2,
                 max_failures: int = 1, cpus_per_worker: float = 1) -> TrainStageConfig:
    return TrainStageConfig(
        recipe=recipe(warmup_steps),
        deepspeed=DeepSpeedConfig(zero_stage=zero, param_persistence_threshold=ZERO3_PERSISTENCE),
        scaling=ScalingSettings(num_workers=workers, cpus_per_worker=cpus_per_worker, max_failures=max_failures),
        pack_size=pack_size,
        checkpoint_every=checkpoint_every,
    )


def train(job, job_id, root, cfg, specs=None, faults=None, planned=None):
    # A concept is planned for the recipe it trains with (its artifact path names the recipe's hash).
    def for_recipe(specs):
        return [dataclasses.replace(s, recipe_hash=config_hash(cfg.recipe)) for s in specs]

    return run_training(job_id=job_id, concepts=for_recipe(specs or job["specs"]), model_uri=job["model"],
                        examples_uri=job["examples"], artifact_root=job["server"].uri(root), run_storage_uri=job["runs"],
                        storage=job["storage"], cfg=cfg, hidden_size=64, num_layers=2, faults=faults,
                        planned=for_recipe(planned) if planned else None)


def run_log(result, kind):
    return read_run_log(result.run_uri, None, kind)


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


@pytest.fixture(scope="module")
def zero3_run(job):
    result = train(job, "z3", "train/artifacts-z3", stage_config(3))
    return result, load_all(job, "train/artifacts-z3")


def assert_partitioned(result, workers: int):
    """Every rank reported (from inside its worker, after a trained pack) backbone parameters
    released to their ZeRO-3 partitions: data of shape (0,), a 1/W shard of the largest kept."""
    seen = run_log(result, "zero")
    assert sorted(r["rank"] for r in seen) == list(range(workers)), seen
    for r in seen:
        largest = r["largest"]
        assert r["released"] > 0, r
        assert largest["data_numel"] == 0 and largest["partition_numel"] == -(-largest["numel"] // workers), r


def test_zero3_twelve_concepts_in_packs_of_four(zero3_run, zero2_run):
    result, artifacts = zero3_run
    assert result.error is None and len(result.packs) == 3
    assert_learned(artifacts)
    assert_partitioned(result, 2)
    # ZeRO-3 shards differently but computes the same thing.
    for key, art in artifacts.items():
        for name in TOKENS:
            torch.testing.assert_close(getattr(art, name), getattr(zero2_run[1][key], name), atol=1e-5, rtol=0)


def test_rerunning_the_same_job_trains_nothing(job, zero2_run):
    before = {k: a.manifest.created_at for k, a in zero2_run[1].items()}
    result = train(job, "z2", "train/artifacts-z2", stage_config(2))
    assert result.packs == []
    after = {k: a.manifest.created_at for k, a in load_all(job, "train/artifacts-z2").items()}
    assert after == before
    assert len(run_log(zero2_run[0], "export")) == 12


# ----------------------------------------------------------------------------- faults
# One job, two submissions, three injected faults (each fires once), checkpoints every step:
#   submission 1 (one restart allowed): rank 1 dies after step 2 of pack 2 -> Ray restarts the worker
#     group, which resumes pack 2; rank 1 dies again after step 2 of pack 3 -> the run fails.
#   submission 2, as a resubmitted job passes it: only pack 3's concepts left to train, every concept
#     planned -> the same run, resumed mid pack 3; rank 0 dies after pack 3's artifacts are written,
#     before its pack-end checkpoint -> the restart finds them exported and trains nothing.
KILL_MID_PACK = FaultSpec(rank=1, pack=1, point="after_step", step=2)
KILL_TO_END_SUBMISSION = FaultSpec(rank=1, pack=2, point="after_step", step=2)
KILL_AFTER_EXPORT = FaultSpec(rank=0, pack=2, point="after_export")


@pytest.fixture(scope="module")
def fault_job(job):
    root = "train/artifacts-fault"
    cfg = stage_config(2, checkpoint_every=1, max_failures=1)
    first = train(job, "fault", root, cfg, faults=[KILL_MID_PACK, KILL_TO_END_SUBMISSION])
    assert first.error is not None, "the second fault should have ended the first submission"
    left = [s for s in job["specs"] if s.id.key in set(first.packs[2])]
    second = train(job, "fault", root, cfg, specs=left, planned=job["specs"], faults=[KILL_AFTER_EXPORT])
    assert second.error is None
    return first, second, load_all(job, root)


def fired(result, fault: FaultSpec) -> dict:
    records = [r for r in run_log(result, "fault")
               if (r["rank"], r["point"], r["pack_index"]) == (fault.rank, fault.point, fault.pack)]
    assert len(records) == 1, records
    return records[0]


def resume_after(result, fault: FaultSpec) -> dict:
    """The resume record of the start that followed `fault`."""
    return next(r for r in run_log(result, "resume") if r["time"] > fired(result, fault)["time"])


def test_a_worker_killed_mid_pack_restarts_the_group_and_resumes_at_the_checkpointed_step(fault_job, zero2_run):
    first, second, artifacts = fault_job
    kill = fired(first, KILL_MID_PACK)
    # Ray restarted the whole worker group: every rank's loop started again after the kill.
    starts = run_log(first, "start")
    assert {r["rank"] for r in starts if r["attempt"] == 2 and r["time"] > kill["time"]} == {0, 1}
    # It continued pack 2 at a step that its checkpoints had reached before the kill, not at 0.
    resumed = resume_after(first, KILL_MID_PACK)
    checkpointed = {(r["pack_index"], r["step"]) for r in run_log(first, "checkpoint") if r["attempt"] == kill["attempt"]}
    assert (resumed["pack"], resumed["pack_index"], resumed["attempt"]) == (2, 1, 2), resumed
    assert resumed["step"] > 0 and (1, resumed["step"]) in checkpointed, (resumed, checkpointed)
    # Telemetry came through the checkpoints: the whole recipe's steps and the loss before training.
    for key, art in artifacts.items():
        assert art.manifest.extra["telemetry"]["steps"] == 4, key
        assert art.manifest.extra["telemetry"]["samples"] == 4 * 3, key
        assert "first_batch_loss_before" in art.manifest.metrics, key
    assert_learned(artifacts)
    exports = run_log(second, "export")
    assert sorted(r["concept"] for r in exports) == sorted(artifacts), "one export per concept"
    for key, art in artifacts.items():
        for name in TOKENS:
            torch.testing.assert_close(getattr(art, name), getattr(zero2_run[1][key], name), atol=1e-5, rtol=0)


def test_a_resubmitted_job_resumes_its_run_at_the_checkpointed_pack_and_step(fault_job):
    first, second, _ = fault_job
    assert second.run_name == first.run_name and second.packs == first.packs
    ended = fired(first, KILL_TO_END_SUBMISSION)
    resumed = [r for r in run_log(second, "resume") if r["time"] > ended["time"]][0]
    checkpointed = {(r["pack_index"], r["step"]) for r in run_log(first, "checkpoint") if r["attempt"] == ended["attempt"]}
    assert resumed["pack_index"] == 2 and resumed["step"] > 0 and (2, resumed["step"]) in checkpointed, (resumed, checkpointed)


def test_a_kill_between_export_and_pack_end_checkpoint_exports_nothing_twice(fault_job):
    _, second, artifacts = fault_job
    kill = fired(second, KILL_AFTER_EXPORT)
    resumed = resume_after(second, KILL_AFTER_EXPORT)
    # The restart resumed mid-way through pack 3, whose concepts had all been exported before the kill.
    assert resumed["pack_index"] == 2 and resumed["step"] > 0, resumed
    exports = run_log(second, "export")
    per_concept = {}
    for r in exports:
        per_concept.setdefault(r["concept"], []).append(r)
    assert sorted(per_concept) == sorted(artifacts)
    assert all(len(v) == 1 for v in per_concept.values()), {k: len(v) for k, v in per_concept.items() if len(v) > 1}
    assert {r["concept"] for r in exports if r["pack_index"] == 2 and r["time"] < kill["time"]} == set(second.packs[2])
    assert not [r for r in exports if r["time"] > kill["time"]]


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
    """Tokens of one 2-concept pack per path and recipe (and worker count), each trained once per module."""

    def __init__(self, job):
        self.job, self.concepts, self.done, self.results = job, job["specs"][:2], {}, {}

    def ray(self, zero: int, warmup_steps: int = 3, workers: int = 1, cpus: int = 1) -> dict[str, dict[str, torch.Tensor]]:
        key = ("ray", zero, warmup_steps, workers) + ((cpus,) if cpus > 1 else ())
        if key not in self.done:
            name = f"one-z{zero}-w{warmup_steps}" + (f"-n{workers}" if workers > 1 else "") + (f"-c{cpus}" if cpus > 1 else "")
            cfg = stage_config(zero, pack_size=2, workers=workers, warmup_steps=warmup_steps, checkpoint_every=4,
                               cpus_per_worker=cpus)
            result = train(self.job, name, f"train/artifacts-{name}", cfg, specs=self.concepts)
            assert result.error is None and len(result.packs) == 1
            arts = load_all(self.job, f"train/artifacts-{name}", self.concepts)
            self.done[key] = {k: {name: getattr(a, name) for name in TOKENS} for k, a in arts.items()}
            self.results[key] = result
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
    # This run's worker is granted 2 CPUs (the others 1): it runs 2 torch threads, whatever the
    # environment's OMP_NUM_THREADS (1 in these tests; the KubeRay job sets 8 for 4-CPU workers).
    assert max_difference(one_trainer.ray(0, 3), one_trainer.ray(0, 1, cpus=2)) > 1e-3
    threads = {r["torch_threads"] for r in run_log(one_trainer.results[("ray", 0, 1, 1, 2)], "start")}
    assert threads == {2}, threads
    assert {r["torch_threads"] for r in run_log(one_trainer.results[("ray", 0, 3, 1)], "start")} == {1}


# ----------------------------------------------------------------------------- independent of the number of workers
# Each concept's loss is divided by its target counts over the whole step, and the DeepSpeed average
# of the workers' gradients is undone: 1, 2 and 3 workers train the same tokens.


def tokens_of(artifacts: dict, keys) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {name: getattr(artifacts[k], name) for name in TOKENS} for k in keys}


def test_zero2_tokens_do_not_depend_on_the_number_of_workers(one_trainer, zero2_run):
    one, three = one_trainer.ray(2), one_trainer.ray(2, workers=3)
    two = tokens_of(zero2_run[1], one)
    assert max_difference(one, two) <= 1e-5 and max_difference(one, three) <= 1e-5, (
        max_difference(one, two), max_difference(one, three))
    assert max_difference(one, one_trainer.library(3)) <= 1e-5


def test_zero3_tokens_do_not_depend_on_the_number_of_workers_with_a_partitioned_backbone(one_trainer, zero3_run):
    one, three = one_trainer.ray(3), one_trainer.ray(3, workers=3)
    two = tokens_of(zero3_run[1], one)
    assert max_difference(one, two) <= 1e-5 and max_difference(one, three) <= 1e-5, (
        max_difference(one, two), max_difference(one, three))
    assert_partitioned(one_trainer.results[("ray", 3, 3, 1)], 1)
    assert_partitioned(one_trainer.results[("ray", 3, 3, 3)], 3)
