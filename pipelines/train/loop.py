"""`train_loop_per_worker`: what each Ray Train worker runs — the library's pack trainer over one
DeepSpeed engine.

Reads top to bottom: load the frozen base once, build the engine (with the recipe's optimizer and
LR schedule), resume from the last Ray checkpoint, then for every pack: skip concepts already
exported, reset the bank, optimizer state and schedule, train, checkpoint, export artifacts (rank 0),
report.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel

from omnipersona.concepts.artifact import config_hash
from omnipersona.concepts.bank import ConceptBank
from omnipersona.model.checkpoint import load_bagel
from omnipersona.training import PackModule, TrainConfig, make_optimizer
from pipelines.storage import StorageConfig, filesystem_for
from pipelines.train.config import DeepSpeedConfig
from pipelines.train.example_store import read_pools
from pipelines.train.runner import (
    PackRunner,
    Progress,
    Telemetry,
    TrainConcept,
    artifact_exists,
    export_artifact,
    fill_partitioned_param,
)

log = logging.getLogger("omnipersona.train")
PROGRESS_FILE = "progress.json"


class WorkerSpec(BaseModel):
    """Everything a worker needs; Ray pickles it to the workers (not JSON: credentials are SecretStr)."""

    job_id: str
    model_uri: str
    examples_uri: str
    artifact_root: str
    storage: StorageConfig = StorageConfig()
    packs: list[list[TrainConcept]]
    pack_size: int
    recipe: TrainConfig
    deepspeed: DeepSpeedConfig
    checkpoint_every: int = 50
    exclude_epochs: list[int] = []  # ingest epochs held out for evaluation
    fail_after_steps: int | None = None  # fault injection for tests: os._exit on rank 1 after N steps


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


def train_loop_per_worker(config: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must be set before deepspeed is imported
    import deepspeed
    import ray.train
    import ray.train.torch

    spec: WorkerSpec = config["spec"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
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
    cfg = bundle.config.llm
    bank = ConceptBank(spec.pack_size, cfg.hidden_size, cfg.vocab_size, spec.recipe.num_und_tokens, spec.recipe.num_gen_tokens, spec.recipe.mode).to(device)
    optimizer, schedule = make_optimizer(bank, spec.recipe)
    # DeepSpeed steps the schedule after every optimizer step, like the plain-PyTorch engine.
    engine, *_ = deepspeed.initialize(model=PackModule(bundle, bank), optimizer=optimizer, lr_scheduler=schedule,
                                      model_parameters=list(bank.parameters()), config=ds_cfg)
    runner = PackRunner(bundle, engine, bank, spec.recipe, rank, world, spec.deepspeed.zero_stage)
    trainer = runner.trainer
    bundle.vae = bundle.vae.to(engine.device)  # a no-op unless DeepSpeed put the module elsewhere

    progress, active = Progress(), None
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            # The schedule's position is the pack's step from progress.json (`start_pack` puts it
            # there): DeepSpeed's saved scheduler state knows nothing of the per-pack restarts.
            engine.load_checkpoint(d, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=False)
            saved = json.loads((Path(d) / PROGRESS_FILE).read_text())
            progress, active = Progress(saved["pack_index"], saved["step"]), saved.get("active")
        log.info("rank %d resumed at pack %d step %d", rank, progress.pack_index, progress.step)

    fs, root = filesystem_for(spec.artifact_root, spec.storage)
    ex_fs, ex_path = filesystem_for(spec.examples_uri, spec.storage)
    recipe_hash = config_hash(spec.recipe)
    steps_done = 0
    total_concepts = sum(len(p) for p in spec.packs)
    concepts_done = sum(len(p) for p in spec.packs[: progress.pack_index])
    first_pack, t_job = progress.pack_index, time.perf_counter()

    def checkpoint(pack_index: int, step: int, active_keys: list[str], metrics: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="ckpt-") as d:
            engine.save_checkpoint(d, exclude_frozen_parameters=True)
            (Path(d) / PROGRESS_FILE).write_text(json.dumps({"pack_index": pack_index, "step": step, "active": active_keys}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    for pack_index, pack in enumerate(spec.packs):
        if pack_index < progress.pack_index:
            continue
        concepts = list(pack)
        resuming = pack_index == progress.pack_index and progress.step > 0 and active is not None
        if resuming:
            concepts = [c for c in concepts if c.id.key in set(active)]
        else:
            # Concepts whose artifact already exists were trained by an earlier (interrupted) run.
            concepts = [c for c in concepts if not artifact_exists(fs, root, c)]
        if not concepts:
            continue
        active_keys = [c.id.key for c in concepts]
        pools = read_pools(ex_fs, ex_path, active_keys, exclude_epochs=spec.exclude_epochs)
        start = progress.step if resuming else 0
        # Optimizer state and schedule for step `start`; the frozen VAE runs here, once per image.
        trainer.start_pack(pools, start)
        if not resuming:
            runner.reset_concepts(concepts, pools)
        telemetry = [Telemetry() for _ in concepts]

        def on_step(record, telemetry=telemetry):
            for slot, tel in enumerate(telemetry):
                tel.add(record, slot)

        if start == 0:
            for tel, value in zip(telemetry, trainer.first_batch_losses(pools)):
                tel.first_batch_before = value
        t_pack = time.perf_counter()
        if rank == 0:
            print(f"[train] pack {pack_index + 1}/{len(spec.packs)}: {len(concepts)} concepts, steps {start}..{spec.recipe.steps}", flush=True)
        step = start
        while step < spec.recipe.steps:
            stop = min(spec.recipe.steps, (step // spec.checkpoint_every + 1) * spec.checkpoint_every)
            trainer.train(pools, step, stop, on_step)
            steps_done += stop - step
            step = stop
            if spec.fail_after_steps is not None and rank == 1 and steps_done >= spec.fail_after_steps and resumed is None:
                os._exit(1)  # simulate a worker process dying mid-job
            if step < spec.recipe.steps:
                checkpoint(pack_index, step, active_keys, {"pack": pack_index, "step": step})
        for tel, value in zip(telemetry, trainer.first_batch_losses(pools)):
            tel.first_batch_after = value
        tensors = runner.concept_tensors(list(range(len(concepts))))  # collective: all ranks
        if rank == 0:
            for slot, c in enumerate(concepts):
                export_artifact(fs, root, c, tensors[slot], recipe_hash, bundle.config.model_id, bundle.fingerprint, telemetry[slot], spec.recipe.mode)
        if rank == 0:
            concepts_done += len(concepts)
            elapsed = time.perf_counter() - t_job
            packs_left = len(spec.packs) - pack_index - 1
            eta = elapsed / max(1, pack_index + 1 - first_pack) * packs_left
            print(f"[train] pack {pack_index + 1}/{len(spec.packs)} done in {time.perf_counter() - t_pack:.1f}s | "
                  f"concepts {concepts_done}/{total_concepts} | ETA {eta:.0f}s", flush=True)
        checkpoint(pack_index + 1, 0, [], {"pack": pack_index, "packs_done": pack_index + 1, "exported": len(concepts)})
        progress = Progress(pack_index + 1, 0)
