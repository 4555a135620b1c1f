"""`train_loop_per_worker`: what each Ray Train worker runs — the library's pack trainer over one
DeepSpeed engine.

Reads top to bottom: start the worker (the frozen base loaded once, the engine with the recipe's
optimizer and LR schedule), read where the last Ray checkpoint stopped, then for every pack of the
run: plan it (skip concepts already exported; a resumed pack keeps its checkpointed concepts and
telemetry), train its steps with checkpoints, export its artifacts (rank 0, each logged once in the
run log), and checkpoint its end.

Workers print nothing: every rank makes the same progress reports through `ray.train.report`
(`pipelines.train.progress`: ready, pack start, steps, pack done; checkpoints ride on them), and the
job process turns rank 0's into log lines. Ray Train's controller takes one report per worker per
poll (every 2 s), so reports without a checkpoint are sent in the background (ASYNC, in order) and a
step is reported only when it is a pack's first, carries a checkpoint, or rank 0 says
`progress_interval_s` have passed since its last report (a broadcast: every rank reports alike).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from omnipersona.concepts.bank import ConceptBank
from omnipersona.model.checkpoint import load_bagel
from omnipersona.training import EarlyStopper, PackModule, StopRule, TrainConfig, heldout_examples, make_optimizer
from pipelines.storage import StorageConfig, filesystem_for
from pipelines.threads import use_granted_cpus
from pipelines.train.config import DeepSpeedConfig, EarlyStoppingConfig
from pipelines.train.example_store import read_heldout_pools, read_pools
from pipelines.train.faults import FaultSpec, maybe_fail
from pipelines.train.progress import pack_done_event, pack_start_event, ready_event, step_event
from pipelines.train.run_log import RunLog
from pipelines.train.runner import (
    PackRunner,
    Telemetry,
    TrainConcept,
    artifact_exists,
    export_artifact,
    fill_partitioned_param,
    tensors_checksum,
    warm_start_tokens,
    zero3_partitioning,
)

log = logging.getLogger("omnipersona.train")
PROGRESS_FILE = "progress.json"
EARLY_STOP_FILE = "early_stop_tokens.pt"  # in a mid-pack checkpoint: the best-check tokens early stopping keeps


class WorkerSpec(BaseModel):
    """Everything a worker needs; Ray pickles it to the workers (not JSON: credentials are SecretStr)."""

    job_id: str
    run_uri: str  # the Ray run's folder; the run log (`pipelines.train.run_log`) is written in it
    model_uri: str
    examples_uri: str
    artifact_root: str
    storage: StorageConfig = StorageConfig()
    packs: list[list[TrainConcept]]  # the run's planned packs (the run's identity is made from them)
    train_keys: list[str] | None = None  # concepts to train; the packs' other concepts are skipped (None: all)
    pack_size: int
    recipe: TrainConfig
    result_hash: str  # the trained concepts' config hash (TrainStageConfig.result_hash): their artifact paths carry it
    deepspeed: DeepSpeedConfig
    checkpoint_every: int = 50
    progress_interval_s: float = 10.0  # seconds between progress reports of steps (`train_steps`)
    exclude_epochs: list[int] = []  # ingest epochs held out for evaluation
    # `train.early_stopping`; its held-out examples are the `exclude_epochs` (the gate's).
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    faults: list[FaultSpec] = []  # fault injection for tests


@dataclass
class Resume:
    """Where the last checkpoint stopped: packs before `pack_index` are done, `step` steps of it are
    done by the concepts `active` (slot = position) with their telemetry so far."""

    pack_index: int = 0
    step: int = 0
    active: list[str] = field(default_factory=list)
    telemetry: list[dict] = field(default_factory=list)
    early_stop: list[dict] | None = None  # the pack's early-stopping records (`EarlyStopper.state`)
    early_stop_tokens: dict | None = None  # and its best-check tokens (slot -> tensors)


@dataclass
class PackPlan:
    """One pack as this run trains it: concepts by slot, the first step to run, their telemetry, and
    which of them to export at the end (False: already exported before a restart)."""

    index: int
    concepts: list[TrainConcept]
    start: int
    telemetry: list[Telemetry]
    export: list[bool]
    stopper: EarlyStopper | None = None  # `train.early_stopping` on (`plan_stopper`)
    heldout: list = field(default_factory=list)  # the held-out examples it checks (`heldout_examples`)
    heldout_counts: list[int] = field(default_factory=list)  # per slot


@dataclass
class Worker:
    """One Ray Train worker for the whole run: the engine, the trainer and where things are stored."""

    spec: WorkerSpec
    rank: int
    world: int
    bundle: Any
    engine: Any
    runner: PackRunner
    run_log: RunLog
    artifact_fs: Any
    artifact_root: str
    concepts_exported: int = 0
    zero_reported: bool = False
    last_report: float = 0.0  # rank 0's clock at its last progress report


def train_loop_per_worker(config: dict) -> None:
    spec: WorkerSpec = config["spec"]
    t0 = time.perf_counter()
    worker = start_worker(spec)
    resume = load_resume(worker)
    announce_start(worker, resume, time.perf_counter() - t0)
    for index, pack in enumerate(spec.packs):
        if index < resume.pack_index:
            continue
        plan = plan_pack(worker, index, pack, resume if index == resume.pack_index else Resume())
        if plan is not None:
            run_pack(worker, plan)


# ----------------------------------------------------------------------------- the worker


def _load_backbone(spec: WorkerSpec, device, dtype, ds_cfg: dict):
    model_fs, model_path = filesystem_for(spec.model_uri, spec.storage)
    filesystem = model_fs if "://" in spec.model_uri else None
    if spec.deepspeed.zero_stage < 3:
        bundle = load_bagel(model_path, device=device, dtype=dtype, filesystem=filesystem)
    else:
        import deepspeed

        # ZeRO-3: the backbone is partitioned as it is built, then filled shard by shard. Its dtype
        # comes from the DeepSpeed config (bf16 on GPU); passing dtype= to Init misbehaves on CPU.
        bundle = load_bagel(model_path, device="cpu", dtype=dtype, filesystem=filesystem,
                            init_context=deepspeed.zero.Init(config_dict_or_path=ds_cfg), fill_param=fill_partitioned_param)
    bundle.model.freeze()
    return bundle


def start_worker(spec: WorkerSpec) -> Worker:
    """Distributed init, the frozen base (once per worker), the bank, the DeepSpeed engine with the
    recipe's optimizer and LR schedule, and this rank's run log."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must be set before deepspeed is imported
    import deepspeed
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_granted_cpus(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    # The GPU Ray assigned to this worker (the CPU when it has none); everything goes there.
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    use_gpu = device.type == "cuda"
    if use_gpu:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if (use_gpu and spec.deepspeed.bf16) else torch.float32
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    torch.manual_seed(spec.recipe.seed)

    ds_cfg = spec.deepspeed.ds_config()
    bundle = _load_backbone(spec, device, dtype, ds_cfg)
    bundle.vae = bundle.vae.to(device=device, dtype=dtype)
    bundle.model.uniform_calls = spec.deepspeed.zero_stage == 3
    llm, r = bundle.config.llm, spec.recipe
    bank = ConceptBank(spec.pack_size, llm.hidden_size, llm.vocab_size, r.num_und_tokens, r.num_gen_tokens, r.mode).to(device)
    optimizer, schedule = make_optimizer(bank, r)
    # DeepSpeed steps the schedule after every optimizer step, like the plain-PyTorch engine.
    engine, *_ = deepspeed.initialize(model=PackModule(bundle, bank), optimizer=optimizer, lr_scheduler=schedule,
                                      model_parameters=list(bank.parameters()), config=ds_cfg)
    runner = PackRunner(bundle, engine, bank, r, rank, world, spec.deepspeed.zero_stage)
    bundle.vae = bundle.vae.to(engine.device)  # a no-op unless DeepSpeed put the module elsewhere
    artifact_fs, artifact_root = filesystem_for(spec.artifact_root, spec.storage)
    return Worker(spec, rank, world, bundle, engine, runner, RunLog.open(spec.run_uri, spec.storage, rank),
                  artifact_fs, artifact_root)


def load_resume(worker: Worker) -> Resume:
    """The last Ray checkpoint (after a restart, or a resubmission of the same run): the engine's
    state (AdamW moments; frozen weights are not in it) and where it stopped; a fresh `Resume` if none."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Resume()
    with checkpoint.as_directory() as d:
        # The schedule's position is the pack's step from progress.json (`start_pack` puts it
        # there): DeepSpeed's saved scheduler state knows nothing of the per-pack restarts.
        worker.engine.load_checkpoint(d, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=False)
        saved = json.loads((Path(d) / PROGRESS_FILE).read_text())
        tokens_file = Path(d) / EARLY_STOP_FILE
        tokens = torch.load(tokens_file, map_location="cpu") if tokens_file.exists() else None
    return Resume(saved["pack_index"], saved["step"], saved.get("active", []), saved.get("telemetry", []),
                  saved.get("early_stop"), tokens)


def announce_start(worker: Worker, resume: Resume, seconds: float) -> None:
    """A `start` record per rank, a `resume` record (rank 0) when a checkpoint resumed the run, and
    the `ready` report (the job log says where it resumed)."""
    import ray.train

    resumed = resume.pack_index > 0 or resume.step > 0
    worker.run_log.add("start", world=worker.world, node_id=ray.get_runtime_context().get_node_id(),
                       torch_threads=torch.get_num_threads(), resumed_pack_index=resume.pack_index if resumed else None,
                       resumed_step=resume.step if resumed else None)
    if resumed and worker.rank == 0:
        worker.run_log.add("resume", pack=resume.pack_index + 1, pack_index=resume.pack_index, step=resume.step)
    report(worker, ready_event(attempt=worker.run_log.attempt, world=worker.world,
                               zero_stage=worker.spec.deepspeed.zero_stage, seconds=seconds,
                               resumed_pack_index=resume.pack_index if resumed else None,
                               resumed_step=resume.step if resumed else None))


# ----------------------------------------------------------------------------- one pack


def plan_pack(worker: Worker, index: int, pack: list[TrainConcept], resume: Resume) -> PackPlan | None:
    """What this run does with pack `index` (None: nothing). Every rank decides the same: the
    decision reads only the spec, the checkpoint and the artifact store (no rank exports meanwhile).

    A pack resumed mid-way keeps its checkpointed concepts in their slots (the bank and AdamW state
    are laid out by them), but exports only those without an artifact yet: a restart after the
    pack's exports and before its pack-end checkpoint trains nothing and exports nothing twice.
    """
    fs, root = worker.artifact_fs, worker.artifact_root
    if resume.step > 0 and resume.active:
        by_key = {c.id.key: c for c in pack}
        concepts = [by_key[k] for k in resume.active]
        export = [not artifact_exists(fs, root, c) for c in concepts]
        if not any(export):
            return None
        telemetry = [Telemetry.from_dict(t) for t in resume.telemetry] or [Telemetry() for _ in concepts]
        plan = PackPlan(index, concepts, resume.step, telemetry, export)
        if plan_stopper(worker, plan) and resume.early_stop is not None:
            plan.stopper.load_state(resume.early_stop)
            plan.stopper.best_tokens = {int(k): v for k, v in (resume.early_stop_tokens or {}).items()}
        return plan
    wanted = worker.spec.train_keys
    # Concepts whose artifact exists were trained by an earlier (interrupted) run or another job.
    concepts = [c for c in pack if (wanted is None or c.id.key in wanted) and not artifact_exists(fs, root, c)]
    if not concepts:
        return None
    plan = PackPlan(index, concepts, 0, [Telemetry() for _ in concepts], [True] * len(concepts))
    plan_stopper(worker, plan)
    return plan


def plan_stopper(worker: Worker, plan: PackPlan) -> bool:
    """With `train.early_stopping` on: the pack's stopper and held-out examples (the gate's epochs of
    the pack's concepts: `exclude_epochs`). True when early stopping is on."""
    spec = worker.spec
    rule = spec.early_stopping
    if not rule.enabled:
        return False
    plan.stopper = EarlyStopper(StopRule(check_every=rule.check_every, patience=rule.patience, min_delta=rule.min_delta,
                                         max_examples=rule.max_examples), len(plan.concepts), spec.recipe.steps)
    keys = [c.id.key for c in plan.concepts]
    if spec.exclude_epochs:
        ex_fs, ex_path = filesystem_for(spec.examples_uri, spec.storage)
        pools = read_heldout_pools(ex_fs, ex_path, keys, spec.exclude_epochs)
    else:
        pools = [None] * len(keys)
    plan.heldout = heldout_examples(pools, rule.max_examples, spec.recipe.seed)
    plan.heldout_counts = [sum(ex.slot == slot for ex in plan.heldout) for slot in range(len(keys))]
    if worker.rank == 0:
        for key, n in zip(keys, plan.heldout_counts):
            if n == 0:
                log.warning("%s: no held-out examples: early stopping cannot stop it", key)
    return True


def run_pack(worker: Worker, plan: PackPlan) -> None:
    """Train the pack from `plan.start`, export its concepts, checkpoint its end."""
    spec, trainer = worker.spec, worker.runner.trainer
    t_pack = time.perf_counter()
    report(worker, pack_start_event(pack_index=plan.index, packs=len(spec.packs), concepts=len(plan.concepts),
                                    start=plan.start, steps=spec.recipe.steps))
    ex_fs, ex_path = filesystem_for(spec.examples_uri, spec.storage)
    pools = read_pools(ex_fs, ex_path, [c.id.key for c in plan.concepts], exclude_epochs=spec.exclude_epochs)
    # Optimizer state and schedule for step `start`; the frozen VAE runs here, once per image.
    trainer.start_pack(pools, plan.start, heldout=plan.heldout)
    if plan.stopper is not None:
        trainer.stopped = plan.stopper.stopped  # a resumed pack: its concepts stopped before the checkpoint
    if plan.start == 0:
        art_fs, art_root = filesystem_for(spec.artifact_root, spec.storage)
        warm = warm_start_tokens(art_fs, art_root, plan.concepts, worker.runner.bank)
        worker.runner.reset_concepts(plan.concepts, pools, warm)
        for tel, value in zip(plan.telemetry, trainer.first_batch_losses(pools)):
            tel.first_batch_before = value
    loss = train_steps(worker, plan, pools)
    if plan.stopper is not None:
        # The tokens kept: each checked concept's best check's (its rows may have drifted since under
        # AdamW's momentum, but nothing read them: its examples had left the steps).
        worker.runner.load_concepts(plan.stopper.best_tokens)
        trainer.stopped = set()
    for tel, value in zip(plan.telemetry, trainer.first_batch_losses(pools)):
        tel.first_batch_after = value
    export_pack(worker, plan)
    maybe_fail(spec.faults, worker.run_log, "after_export", plan.index)
    done = sum(len(p) for p in spec.packs[: plan.index + 1])
    checkpoint(worker, plan.index + 1, 0, [], [], pack_done_event(
        pack_index=plan.index, packs=len(spec.packs), concepts=len(plan.concepts), loss=loss, exported=sum(plan.export),
        seconds=time.perf_counter() - t_pack, concepts_done=done, concepts_total=sum(len(p) for p in spec.packs)))


def train_steps(worker: Worker, plan: PackPlan, pools) -> float | None:
    """Steps `plan.start`.. of the pack, one at a time, with a checkpoint every `checkpoint_every`
    riding on that step's progress report. Returns the last step's loss (None: no step left)."""
    spec = worker.spec
    keys = [c.id.key for c in plan.concepts]
    loss = None

    stopper = plan.stopper
    trainer = worker.runner.trainer

    def on_step(record):
        for slot, tel in enumerate(plan.telemetry):
            if record.samples[slot]:  # a stopped concept takes no part in the step
                tel.add(record, slot)

    for step in range(plan.start, spec.recipe.steps):
        if stopper is not None and stopper.all_stopped:
            break  # a pack resumed after its last concept stopped
        (record,) = trainer.train(pools, step, step + 1, on_step)
        done, loss = step + 1, record.loss
        if stopper is not None and stopper.rule.due(done, spec.recipe.steps):
            for slot in trainer.check(stopper, plan.heldout, done, worker.runner.concept_tensors):
                if worker.rank == 0:
                    worker.run_log.add("early_stop", concept=keys[slot], pack_index=plan.index,
                                       **stopper.concepts[slot].summary(spec.recipe.steps))
        event = step_event(pack_index=plan.index, packs=len(spec.packs), step=done, steps=spec.recipe.steps,
                           concepts=len(plan.concepts), loss=record.loss, seconds=record.seconds)
        if done < spec.recipe.steps and done % spec.checkpoint_every == 0:
            checkpoint(worker, plan.index, done, keys, plan.telemetry, event, stopper)
        elif step == plan.start or _rank0_says(worker, time.time() - worker.last_report >= spec.progress_interval_s):
            report(worker, event)
        maybe_fail(spec.faults, worker.run_log, "after_step", plan.index, done)
        if stopper is not None and stopper.all_stopped:
            break  # every concept of the pack has stopped
    if spec.deepspeed.zero_stage == 3 and not worker.zero_reported:
        worker.run_log.add("zero", pack_index=plan.index, **zero3_partitioning(worker.bundle.model))
        worker.zero_reported = True
    return loss


def report(worker: Worker, event: dict) -> None:
    """A progress report without a checkpoint: sent in the background (Ray keeps reports in order),
    so training does not wait for the controller to take it."""
    import ray.train

    ray.train.report(event, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
    worker.last_report = time.time()


def _rank0_says(worker: Worker, decision: bool) -> bool:
    """Rank 0's `decision` on every rank (a one-element broadcast): what only rank 0's clock decides
    must still be done by every rank alike."""
    if worker.world == 1:
        return decision
    flag = torch.tensor([1 if decision else 0], dtype=torch.int32, device=worker.engine.device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def export_pack(worker: Worker, plan: PackPlan) -> None:
    """Rank 0 writes the artifacts of the concepts to export, each followed by its `export` record;
    every rank waits until it is done (so "after the export" means the same on every rank)."""
    tensors = worker.runner.concept_tensors(list(range(len(plan.concepts))))  # collective: all ranks
    if worker.rank == 0:
        spec, bundle = worker.spec, worker.bundle
        for slot, c in enumerate(plan.concepts):
            if not plan.export[slot]:
                continue
            early_stop = None
            if plan.stopper is not None:
                early_stop = {**plan.stopper.concepts[slot].summary(spec.recipe.steps),
                              "heldout_examples": plan.heldout_counts[slot]}
            path = export_artifact(worker.artifact_fs, worker.artifact_root, c, tensors[slot], spec.result_hash,
                                   bundle.config.model_id, bundle.fingerprint, plan.telemetry[slot], spec.recipe.mode,
                                   early_stop)
            worker.run_log.add("export", concept=c.id.key, subpath=c.subpath, pack_index=plan.index,
                               checksum=tensors_checksum(tensors[slot]), path=path)
            worker.concepts_exported += 1
    torch.distributed.barrier()


def checkpoint(worker: Worker, pack_index: int, step: int, active: list[str], telemetry: list[Telemetry],
               metrics: dict, stopper: EarlyStopper | None = None) -> None:
    """Every rank saves its DeepSpeed state (frozen weights excluded); rank 0 adds where the run is
    (`progress.json`: pack, step, the pack's concepts and their telemetry; with early stopping its
    records, and its best-check tokens in `early_stop_tokens.pt`). Ray merges the ranks' folders."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="ckpt-") as d:
        worker.engine.save_checkpoint(d, exclude_frozen_parameters=True)
        if worker.rank == 0:
            progress = {"pack_index": pack_index, "step": step, "active": active,
                        "telemetry": [t.to_dict() for t in telemetry]}
            if stopper is not None:
                progress["early_stop"] = stopper.state()
                torch.save(stopper.best_tokens, Path(d) / EARLY_STOP_FILE)
            (Path(d) / PROGRESS_FILE).write_text(json.dumps(progress))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    worker.last_report = time.time()
    if worker.rank == 0:
        worker.run_log.add("checkpoint", pack_index=pack_index, step=step)
