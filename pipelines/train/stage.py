"""The train stage on Ray: one TorchTrainer for the whole job, resumable by job id."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from pipelines.storage import StorageConfig, filesystem_for
from pipelines.train.config import TrainStageConfig
from pipelines.train.loop import WorkerSpec, train_loop_per_worker
from pipelines.train.packs import bytes_per_concept, make_packs, pack_size_for
from pipelines.train.runner import TrainConcept, artifact_exists

log = logging.getLogger("omnipersona.train")


@dataclass
class TrainResult:
    packs: list[list[str]]
    pack_size: int
    error: str | None


def plan_digest(packs: list[list[str]], pack_size: int) -> str:
    return hashlib.sha256(json.dumps([pack_size, packs]).encode()).hexdigest()[:10]


def choose_pack_size(cfg: TrainStageConfig, hidden: int, layers: int, tokens_per_example: int = 160) -> int:
    if cfg.pack_size is not None:
        return min(cfg.pack_size, cfg.max_pack_size)
    per = bytes_per_concept(hidden, layers, cfg.recipe, tokens_per_example, cfg.scaling.num_workers)
    return pack_size_for(cfg.pack_memory_budget_mb, per, cfg.max_pack_size)


def run_training(
    *,
    job_id: str,
    concepts: list[TrainConcept],
    model_uri: str,
    examples_uri: str,
    artifact_root: str,
    run_storage_uri: str,
    storage: StorageConfig,
    cfg: TrainStageConfig,
    hidden_size: int,
    num_layers: int,
    fail_after_steps: int | None = None,
    exclude_epochs: list[int] | None = None,
) -> TrainResult:
    """Train every concept; artifacts land under `artifact_root`. Rerunning the same job id resumes."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    pack_size = choose_pack_size(cfg, hidden_size, num_layers)
    fs, root = filesystem_for(artifact_root, storage)
    # Concepts exported by an earlier run of this job (or any job on the same data) are done.
    todo = [c for c in concepts if not artifact_exists(fs, root, c)]
    by_key = {c.id.key: c for c in todo}
    packs = make_packs(list(by_key), pack_size)
    if not packs:
        log.info("nothing to train: all %d concepts already have artifacts", len(concepts))
        return TrainResult(packs=[], pack_size=pack_size, error=None)
    spec = WorkerSpec(
        job_id=job_id,
        model_uri=model_uri,
        examples_uri=examples_uri,
        artifact_root=artifact_root,
        storage=storage,
        packs=[[by_key[k] for k in pack] for pack in packs],
        pack_size=pack_size,
        recipe=cfg.recipe,
        deepspeed=cfg.deepspeed,
        checkpoint_every=cfg.checkpoint_every,
        fail_after_steps=fail_after_steps,
        exclude_epochs=exclude_epochs or [],
    )
    run_fs, run_path = filesystem_for(run_storage_uri, storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        # The spec object itself (pickled), not a JSON dump: credentials are SecretStr fields.
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
        ),
        run_config=RunConfig(
            # Ray resumes a run by name: the name pins the pack plan so that a checkpoint is only
            # ever resumed by the same packs (a rerun with fewer concepts left starts a new run).
            name=f"{job_id}-{plan_digest(packs, pack_size)}",
            storage_path=run_path,
            storage_filesystem=run_fs,
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    log.info("training %d concepts in %d packs of <= %d on %d workers (ZeRO-%d)", len(concepts), len(packs), pack_size, cfg.scaling.num_workers, cfg.deepspeed.zero_stage)
    result = trainer.fit()
    return TrainResult(packs=packs, pack_size=pack_size, error=str(result.error) if result.error else None)
