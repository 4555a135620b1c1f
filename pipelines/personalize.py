"""One personalization job: ingest -> select -> train -> evaluate -> register -> summary.

Reads top to bottom. Concepts flow through four outcomes: quarantined (ingest refused its data),
skipped (this data + config is already registered), failed (a later step raised; the job goes
on), done (a registered version; `champion` moved if the gate passed).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import datetime, timezone

from omnipersona.concepts.artifact import ConceptArtifact, artifact_subpath, config_hash
from pipelines.config import JobConfig
from pipelines.ingest.dataset import build_ingest
from pipelines.ingest.features import colour_histogram_features
from pipelines.model_store import VisionEncoderFeatures, load_base, resolve_model_uri
from pipelines.register import ConceptRegistry, JobRunSpec
from pipelines.storage import filesystem_for, write_bytes_atomic
from pipelines.summary import ConceptOutcome, JobSummary
from pipelines.train.example_store import read_pools, write_examples
from omnipersona.identity import ConceptId
from pipelines.train.runner import TrainConcept, artifact_exists
from pipelines.train.stage import run_training

log = logging.getLogger("omnipersona.job")


def _ensure_ray(cfg: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env={"env_vars": env})


def job_id_for(cfg: JobConfig, snapshot_digest: str, recipe_hash: str) -> str:
    """Same snapshot + same training config = same job id (so a rerun resumes or is a no-op)."""
    return cfg.job_id or f"job-{hashlib.sha256(f'{snapshot_digest}|{recipe_hash}'.encode()).hexdigest()[:12]}"


def run_job(cfg: JobConfig) -> JobSummary:
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    _ensure_ray(cfg)
    model_uri = resolve_model_uri(cfg.model.uri, cfg.model.tiny_cache)
    bundle = load_base(model_uri, cfg.storage)
    recipe_hash = config_hash(cfg.train.recipe)

    # 1. ingest: snapshot, validation, quarantine, examples (lazy)
    log.info("[1/5] ingest %s", cfg.ingest.uploads_uri)
    features = (
        VisionEncoderFeatures(model_uri, cfg.storage, cfg.ingest.vit_size)
        if cfg.hard_negative_features == "vision_encoder"
        else colour_histogram_features
    )
    ingest = build_ingest(cfg.ingest, cfg.storage, feature_fn=features)
    digests = ingest.snapshot.digests()
    snapshot_digest = hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(digests.items())).encode()).hexdigest()[:16]
    job_id = job_id_for(cfg, snapshot_digest, recipe_hash)
    summary = JobSummary(job_id=job_id, started_at=started, snapshot_uri=cfg.ingest.uploads_uri, config_hash=recipe_hash,
                         quarantined_objects=len(ingest.quarantine.rows))
    accepted = {c.concept_key for c in ingest.concepts}
    for row in ingest.quarantine.rows:
        key = f"{row.tenant}/{row.concept}" if row.tenant and row.concept else None
        if key and key not in accepted:
            summary.add(ConceptOutcome(concept_key=key, outcome="quarantined", reason=f"{row.reason}: {row.message}"))
    work_fs, work = filesystem_for(f"{cfg.artifacts.work_root.rstrip('/')}/{job_id}", cfg.storage)
    ingest.quarantine.write(f"{cfg.artifacts.work_root.rstrip('/')}/{job_id}/quarantine.json", cfg.storage)

    # MLflow's registry resolves `models:/m-...` sources through the process-wide tracking URI (a
    # bare sqlite store would otherwise look in ./mlruns): this job process talks to one MLflow.
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    registry = ConceptRegistry(cfg.mlflow.tracking_uri, experiment_name=cfg.mlflow.experiment, prefix=cfg.mlflow.registry_prefix)
    run_id = registry.start_job_run(JobRunSpec(
        job_id=job_id, snapshot_uri=cfg.ingest.uploads_uri, snapshot_digest=snapshot_digest, config_hash=recipe_hash,
        base_model_id=bundle.config.model_id, base_fingerprint=bundle.fingerprint, zero_stage=cfg.train.deepspeed.zero_stage,
        ray_submission_id=os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_SUBMISSION_ID"),
    ))

    # 2. select: skip what is registered, register what is exported, train the rest
    log.info("[2/5] select new or changed concepts")
    art_fs, art_root = filesystem_for(cfg.artifacts.root, cfg.storage)
    specs = [TrainConcept(ConceptId.parse(c.concept_key), c.display_name, c.class_word, c.data_digest) for c in ingest.concepts]
    to_train, to_register = [], []
    for s in specs:
        existing = registry.find_version(registry.model_name(s.id.tenant, s.id.concept), s.data_digest, recipe_hash)
        if existing is not None:
            summary.add(ConceptOutcome(concept_key=s.id.key, outcome="skipped", model_name=registry.model_name(s.id.tenant, s.id.concept),
                                       version=str(existing.version), reason="this data and config are already registered"))
        elif artifact_exists(art_fs, art_root, s):
            to_register.append(s)  # exported by an earlier run that could not register it
        else:
            to_train.append(s)
    log.info("%d to train, %d exported but unregistered, %d skipped, %d quarantined",
             len(to_train), len(to_register), summary.counts()["skipped"], summary.counts()["quarantined"])

    # 3. train
    held_out = [cfg.ingest.epochs - 1] if cfg.ingest.epochs > 1 else []
    examples_uri = f"{cfg.artifacts.work_root.rstrip('/')}/{job_id}/examples"
    ex_fs, ex_path = filesystem_for(examples_uri, cfg.storage)
    needs_examples = to_train or (cfg.evaluation.enabled and to_register)
    if needs_examples and ex_fs.get_file_info(ex_path).type.name == "NotFound":
        wanted = {s.id.key for s in to_train + to_register}
        write_examples(ingest.dataset.filter(lambda r: r["concept_key"] in wanted), ex_fs, ex_path)
    if to_train:
        log.info("[3/5] train %d concepts", len(to_train))
        result = run_training(
            job_id=job_id, concepts=to_train, model_uri=model_uri, examples_uri=examples_uri,
            artifact_root=cfg.artifacts.root, run_storage_uri=cfg.artifacts.runs_root, storage=cfg.storage, cfg=cfg.train,
            hidden_size=bundle.config.llm.hidden_size, num_layers=bundle.config.llm.num_hidden_layers, exclude_epochs=held_out,
        )
        if result.error:
            log.error("training ended with an error: %s", result.error)
    for s in to_train:
        if artifact_exists(art_fs, art_root, s):
            to_register.append(s)
        else:
            summary.add(ConceptOutcome(concept_key=s.id.key, outcome="failed", reason="training did not produce an artifact (see the job log)"))

    # 4 + 5. evaluate and register, one concept at a time; one failure never stops the others
    log.info("[4/5] evaluate and [5/5] register %d concepts", len(to_register))
    probe = _world_probe(cfg) if to_register else None
    for i, s in enumerate(sorted(to_register, key=lambda c: c.id.key), 1):
        try:
            outcome = _evaluate_and_register(cfg, registry, run_id, bundle, s, art_fs, art_root, ex_fs, ex_path, held_out, probe)
        except Exception as exc:  # noqa: BLE001 - reported per concept, the batch goes on
            log.exception("concept %s failed", s.id.key)
            outcome = ConceptOutcome(concept_key=s.id.key, outcome="failed", reason=f"{type(exc).__name__}: {exc}")
        summary.add(outcome)
        log.info("registered %d/%d: %s -> %s %s", i, len(to_register), s.id.key, outcome.outcome, outcome.version or "")

    summary.finish()
    _write_summary(cfg, registry, run_id, summary)
    registry.end_job_run(run_id, "FINISHED")
    log.info("job %s finished in %.0fs: %s", job_id, time.perf_counter() - t0, summary.counts())
    return summary


def _evaluate_and_register(cfg, registry, run_id, bundle, s: TrainConcept, art_fs, art_root, ex_fs, ex_path, held_out, probe):
    from omnipersona.infer.engine import Persona
    from omnipersona.model.sampling import FlowSampling
    from pipelines.evaluate.heldout import heldout_metrics, sample_pictures

    path = f"{art_root}/{artifact_subpath(s.id.tenant, s.id.concept, s.data_digest)}"
    metrics, pictures = {}, {}
    if cfg.evaluation.enabled:
        artifact = ConceptArtifact.load(path, filesystem=art_fs, expected_fingerprint=bundle.fingerprint)
        persona = Persona.from_artifacts(bundle, [artifact], image_size=cfg.ingest.vit_size,
                                         sampling=FlowSampling(num_steps=cfg.evaluation.sampling_steps))
        # The concept's held-out set when the job has one; else the ingest epoch held out of training.
        metrics = _benchmark_metrics(cfg, persona, s, cfg.ingest.vit_size, probe)
        if not metrics or cfg.evaluation.sample_images:
            pool = read_pools(ex_fs, ex_path, [s.id.key], only_epochs=held_out or None)[0]
        if not metrics:
            metrics = heldout_metrics(persona, artifact.manifest.display_name, pool.examples, cfg.evaluation.max_examples)
        if cfg.evaluation.sample_images:
            pictures = sample_pictures(persona, artifact.manifest.display_name, pool.examples)
    data_uri = f"{cfg.ingest.uploads_uri.rstrip('/')}/{s.id.key}"
    res = registry.register_concept(run_id, path, filesystem=art_fs, metrics=metrics, images=pictures, gate=cfg.gate, data_uri=data_uri)
    reason = "" if res.gate is None or res.gate.passed else "gate: " + "; ".join(res.gate.reasons)
    if res.status == "already_registered":
        return ConceptOutcome(concept_key=s.id.key, outcome="skipped", model_name=res.model_name, version=str(res.version),
                              reason="this data and config are already registered")
    return ConceptOutcome(concept_key=s.id.key, outcome="done", model_name=res.model_name, version=str(res.version),
                          promoted=res.promoted, metrics=metrics, reason=reason)


def _world_probe(cfg: JobConfig):
    """The judge of generated pictures (`evaluation.judge`), loaded once per job when the config names one."""
    from pipelines.evaluate.benchmark import load_judge

    return load_judge(cfg.evaluation, cfg.ingest.vit_size, log=log.info)


def _benchmark_metrics(cfg: JobConfig, persona, s: TrainConcept, image_size: int, probe=None) -> dict[str, float]:
    """The OmniPBench-style harness on the concept's held-out set ({} when the job has none for it).

    Its metrics (same names as `heldout_metrics`' where they overlap) take the place of the
    ingest-epoch ones: they come from material the concept's training never saw in any form."""
    from pipelines.evaluate.benchmark import benchmark_metrics

    return benchmark_metrics(cfg.evaluation, cfg.storage, persona, s.id, image_size, probe)


def _write_summary(cfg: JobConfig, registry: ConceptRegistry, run_id: str, summary: JobSummary) -> None:
    base = f"{cfg.artifacts.work_root.rstrip('/')}/{summary.job_id}"
    fs, path = filesystem_for(base, cfg.storage)
    write_bytes_atomic(fs, f"{path}/summary.json", summary.to_json().encode())
    write_bytes_atomic(fs, f"{path}/summary.md", summary.to_markdown().encode())
    registry.client.log_text(run_id, summary.to_json(), "summary/summary.json")
    registry.client.log_text(run_id, summary.to_markdown(), "summary/summary.md")
    counts = summary.counts()
    for k, v in counts.items():
        registry.client.log_metric(run_id, f"concepts_{k}", v)
