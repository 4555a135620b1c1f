"""The train stage on Ray: one TorchTrainer for the whole job, resumable by its run identity.

The Ray run is named `<job id>-<run digest>`; the digest covers what a checkpoint can only be
resumed by: the planned packs (every planned concept's key, data digest, recipe hash and base
fingerprint, cut into packs), the recipe, the DeepSpeed settings and the number of workers. The
plan is made from every concept the job plans (`planned`), BEFORE dropping the ones already
exported, so a resubmitted job gets the same run and Ray hands its workers the last checkpoint;
concepts with an artifact are skipped inside the run. The run folder `<runs>/<run name>/` holds
Ray's checkpoints and the run log (`pipelines.train.run_log`: starts, resumes, checkpoints, exports).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from omnipersona.concepts.artifact import config_hash
from pipelines.storage import StorageConfig, filesystem_for, join
from pipelines.train.config import TrainStageConfig
from pipelines.train.faults import FaultSpec
from pipelines.train.loop import WorkerSpec, train_loop_per_worker
from pipelines.train.packs import make_packs, plan_pack_size
from pipelines.train.progress import follow_progress
from pipelines.train.runner import TrainConcept, artifact_exists

log = logging.getLogger("omnipersona.train")


@dataclass
class TrainResult:
    packs: list[list[str]]  # the run's planned packs (concept keys); empty when nothing was left to train
    pack_size: int
    error: str | None
    run_name: str | None = None  # None: no run was needed
    run_uri: str | None = None  # the run folder: Ray's checkpoints and the run log


def run_name(job_id: str, packs: list[list[TrainConcept]], pack_size: int, cfg: TrainStageConfig) -> str:
    """The Ray run's name: the job id and a digest of everything a checkpoint is only valid for."""
    identity = {
        "packs": [[c.subpath for c in pack] for pack in packs],  # key, data digest, recipe hash, base fingerprint
        "pack_size": pack_size,
        "recipe": config_hash(cfg.recipe),
        "deepspeed": cfg.deepspeed.model_dump(mode="json"),
        "workers": cfg.scaling.num_workers,  # ZeRO partitions its checkpoints per rank
    }
    return f"{job_id}-{config_hash(identity)[:10]}"


def choose_pack_size(cfg: TrainStageConfig, hidden: int, layers: int, tokens_per_example: int = 160) -> int:
    if cfg.pack_size is not None:
        return min(cfg.pack_size, cfg.max_pack_size)
    return plan_pack_size(hidden=hidden, layers=layers, recipe=cfg.recipe, tokens_per_example=tokens_per_example,
                          num_workers=cfg.scaling.num_workers, memory_budget_mb=cfg.pack_memory_budget_mb,
                          tokens_per_worker=cfg.pack_tokens_per_worker, max_pack=cfg.max_pack_size)


def plan_packs(planned: list[TrainConcept], pack_size: int) -> list[list[TrainConcept]]:
    """Every planned concept, by sorted key, cut into packs of `pack_size` (a key twice is refused)."""
    by_key = {c.id.key: c for c in planned}
    if len(by_key) != len(planned):
        raise ValueError("a concept is planned twice")
    return [[by_key[k] for k in pack] for pack in make_packs(list(by_key), pack_size)]


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
    planned: list[TrainConcept] | None = None,
    faults: list[FaultSpec] | None = None,
    exclude_epochs: list[int] | None = None,
) -> TrainResult:
    """Train `concepts`; artifacts land under `artifact_root`. Submitting the same job again resumes.
    A run that fails for good (its `max_failures` restarts spent) returns its error in `error`:
    the concepts exported before it keep their artifacts.

    `planned`: every concept the job plans, including those already exported by an earlier
    submission (default: `concepts`). The run's packs and name come from it, so pass the list from
    before any filtering by existing artifacts: a resubmission then resumes the same run.
    """
    planned = list(concepts) if planned is None else list(planned)
    missing = {c.id.key for c in concepts} - {c.id.key for c in planned}
    if missing:
        raise ValueError(f"concepts to train that are not planned: {sorted(missing)}")
    pack_size = choose_pack_size(cfg, hidden_size, num_layers)
    fs, root = filesystem_for(artifact_root, storage)
    # Concepts exported by an earlier run of this job (or any job on the same data) are done.
    todo = [c for c in concepts if not artifact_exists(fs, root, c)]
    if not todo:
        log.info("nothing to train: all %d concepts already have artifacts", len(concepts))
        return TrainResult(packs=[], pack_size=pack_size, error=None)
    packs = plan_packs(planned, pack_size)
    name = run_name(job_id, packs, pack_size, cfg)
    spec = WorkerSpec(
        job_id=job_id, run_uri=join(run_storage_uri, name), model_uri=model_uri, examples_uri=examples_uri,
        artifact_root=artifact_root, storage=storage, packs=packs, train_keys=[c.id.key for c in todo],
        pack_size=pack_size, recipe=cfg.recipe, result_hash=cfg.result_hash(), deepspeed=cfg.deepspeed, checkpoint_every=cfg.checkpoint_every,
        progress_interval_s=cfg.progress_interval_s, early_stopping=cfg.early_stopping,
        faults=faults or [], exclude_epochs=exclude_epochs or [],
    )
    if cfg.early_stopping.enabled and not exclude_epochs:
        log.warning("[train] train.early_stopping is on but no ingest epoch is held out of training "
                    "(ingest.gate_holdout_every: 0 and one epoch): no concept has held-out examples, none will stop early")
    log.info("[train] run %s: %d of %d planned concepts to train in %d packs of <= %d; starting %d workers (ZeRO-%d)",
             name, len(todo), len(planned), len(packs), pack_size, cfg.scaling.num_workers, cfg.deepspeed.zero_stage)
    error = fit(spec, cfg, name, run_storage_uri, storage)
    return TrainResult(packs=[[c.id.key for c in pack] for pack in packs], pack_size=pack_size, error=error,
                       run_name=name, run_uri=spec.run_uri)


def fit(spec: WorkerSpec, cfg: TrainStageConfig, name: str, run_storage_uri: str, storage: StorageConfig) -> str | None:
    """Run (or resume: Ray resumes a run by name) the TorchTrainer; returns its error, if it failed for good."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    run_fs, run_path = filesystem_for(run_storage_uri, storage)
    # The workers' progress reports become this process's log lines (`pipelines.train.progress`).
    with follow_progress() as progress_callback:
        trainer = TorchTrainer(
            train_loop_per_worker,
            # The spec object itself (pickled), not a JSON dump: credentials are SecretStr fields.
            train_loop_config={"spec": spec},
            scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                         resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                                               **cfg.scaling.resources_per_worker},
                                         placement_strategy=cfg.scaling.placement_strategy),
            run_config=RunConfig(
                # The same job inputs give the same name (see `run_name`): a resubmission resumes.
                name=name,
                storage_path=run_path,
                storage_filesystem=run_fs,
                failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=[progress_callback],
            ),
        )
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:  # Ray Train V2 raises once its restarts (max_failures) are spent
            return f"{type(exc).__name__}: {exc}"
    return str(result.error) if result.error else None
