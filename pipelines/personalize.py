"""One personalization job: ingest -> select -> train -> evaluate -> register -> summary.

Reads top to bottom: `run_job` opens the job (`JobContext`), then calls one function per stage,
each with typed inputs and results. Concepts flow through these outcomes: quarantined (ingest
refused its data), skipped (this data + config is already registered), failed (a later step
raised; the job goes on), pending_registration (exported, but MLflow could not be reached: the next
run registers it without training), pending (the job stopped before it, or another job held it and
did not export it), done (a registered version; `champion` moved if the gate passed).

Leases (`pipelines.job_leases`) keep two live runs from training one artifact: one run per job id
at a time, one job per concept artifact (docs/faults.md, "Service faults").
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from omnipersona.concepts.artifact import ConceptArtifact, artifact_subpath
from omnipersona.identity import ConceptId
from pipelines.config import JobConfig
from pipelines.ingest.dataset import IngestResult, build_ingest
from pipelines.ingest.features import colour_histogram_features
from pipelines.ingest.snapshot import take_snapshot
from pipelines.job_leases import JobLeases, registered_by
from pipelines.model_store import (BaseModelInfo, VisionEncoderFeatures, base_weights_loaded_here, describe_base, load_base,
                                   resolve_model_uri)
from pipelines.paths import JobPaths
from pipelines.register import ConceptRegistry, JobRuns, JobRunSpec, MlflowConnection, names
from pipelines.register import stage as register_stage
from pipelines.register.stage import SKIP_REASON
from pipelines.storage import filesystem_for, write_bytes_atomic
from pipelines.summary import ConceptOutcome, DriverUse, JobSummary
from pipelines.train.example_store import read_pools, write_examples
from pipelines.train.runner import TrainConcept, artifact_exists
from pipelines.train.stage import run_training

log = logging.getLogger("omnipersona.job")


@dataclass
class JobContext:
    """What every stage of one job shares (instead of long positional parameter lists)."""

    cfg: JobConfig
    paths: JobPaths
    model_uri: str
    base: BaseModelInfo  # id, sizes and fingerprint: the driver never loads the weights to know them
    recipe_hash: str
    runs: JobRuns
    run_id: str
    registry: ConceptRegistry
    summary: JobSummary
    leases: JobLeases | None = None  # set by run_job once the job has a run
    mlflow_down: str | None = None  # why MLflow was found unreachable during this run (then registration stops)

    @property
    def bundle(self):
        """The loaded base (cached per process): only evaluation in this process needs it."""
        return load_base(self.model_uri, self.cfg.storage)

    @property
    def held_out_epochs(self) -> list[int]:
        """The ingest epochs training leaves out and the gate scores: the gate's epoch, planned from
        each concept's held-out images (`ingest.gate_holdout_every`); with that rule off the last
        ingest epoch when there are several."""
        from pipelines.ingest.holdout import gate_epochs

        return gate_epochs(self.cfg.ingest)


@dataclass
class JobPlan:
    to_train: list[TrainConcept] = field(default_factory=list)
    to_register: list[TrainConcept] = field(default_factory=list)  # exported earlier, never registered
    why: dict[ConceptId, str] = field(default_factory=dict)  # why each concept is trained (or registered)


def run_job(cfg: JobConfig) -> JobSummary:
    """Run every stage; the summary is written (and returned) whatever happens after the job has an
    id. A stage that raises stops the job: the concepts it had not reached are `pending`, the summary
    says why, and the exception propagates (the entrypoint's exit code says the job could not run)."""
    t0 = time.perf_counter()
    _ensure_ray(cfg)
    ctx, ingest = open_job(cfg)
    try:
        ctx.leases = JobLeases(cfg, ctx.paths.job_id, ctx.run_id)
        waited = ctx.leases.take_job()  # another run of this job: wait until it ends
        selection = select(ctx, ingest)
        if waited is not None:
            note_registered_by(ctx)
        write_training_examples(ctx, ingest, selection)  # held concepts' too: this job may evaluate them later
        selection.to_train, held = ctx.leases.claim(selection.to_train)
        selection.to_register, held_exported = ctx.leases.claim(selection.to_register)
        held += held_exported
        if selection.to_train:
            log.info("[3/5] train: %d concepts", len(selection.to_train))
            selection.to_register += train(ctx, selection.to_train, planned=selection.to_train + selection.to_register)
        else:
            log.info("[3/5] train: nothing to train")
        log.info("[4/5] evaluate and [5/5] register: %d concepts", len(selection.to_register))
        evaluate_and_register(ctx, selection)
        if held:
            take_over_held(ctx, selection, held)
    except BaseException as exc:
        ctx.summary.error = f"{type(exc).__name__}: {exc}"
        for c in ingest.concepts:
            if not any(o.concept_key == c.concept_key for o in ctx.summary.concepts):
                ctx.summary.add(ConceptOutcome(concept_key=c.concept_key, outcome="pending", reason="the job stopped before it"))
        raise
    finally:
        notes = {c.concept_key: c.notes for c in ingest.concepts}
        for outcome in ctx.summary.concepts:
            outcome.notes = notes.get(outcome.concept_key, [])
        if ctx.leases is not None:
            ctx.leases.close()
        finish_job(ctx)
        counts = ctx.summary.counts()
        log.info("job %s run %s finished in %.0fs: %s", ctx.paths.job_id, ctx.run_id, time.perf_counter() - t0,
                 ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))
    return ctx.summary


def _ensure_ray(cfg: JobConfig) -> None:
    """Join the cluster (`ray.address`, RAY_ADDRESS: as under `ray job submit`) or start a local one.
    The Ray processes' own output (train workers, the train controller, Ray Data tasks) reaches
    this job's log only when it logs at debug level: progress comes through `ray.train.report`."""
    import ray

    if ray.is_initialized():
        return
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    log_to_driver = logging.getLogger().isEnabledFor(logging.DEBUG)
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # Under `ray job submit` the submission's runtime env reaches every worker of the job, and Ray
    # refuses a driver runtime env that sets one of its variables again: leave those to it.
    env = {k: v for k, v in env.items() if k not in _submitted_env_vars()}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env={"env_vars": env},
                 log_to_driver=log_to_driver)


def _submitted_env_vars() -> dict[str, str]:
    """The environment variables of the runtime env `ray job submit` gave this driver (empty when
    it was not submitted so): the job supervisor passes the job's config in RAY_JOB_CONFIG_JSON_ENV_VAR."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return {}


def ray_submission_id() -> str | None:
    """The id `ray job submit` gave this job (None when it was not submitted so). Ray 2.60 sets no
    environment variable for it: the job supervisor puts it in the driver's job config metadata,
    which the runtime context's worker holds."""
    import ray

    try:
        metadata = ray.get_runtime_context().worker.core_worker.get_job_config().metadata
        return metadata.get("job_submission_id") or None
    except Exception:  # noqa: BLE001 - not connected, or a Ray without that metadata
        return None


def job_params(cfg: JobConfig) -> dict[str, str]:
    """The recipe (`recipe.<field>`) and the job's settings (`<section>.<field>`, nested with dots)
    as MLflow params of the job run: the whole config but the storage section (credentials) and
    the tracking URI. Lists and null values as JSON."""
    data = cfg.model_dump(mode="json", exclude={"storage": True, "mlflow": {"tracking_uri"}})
    flat = {f"recipe.{k}": v for k, v in data["train"].pop("recipe").items()}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", data)
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat.items()}


def job_id_for(cfg: JobConfig, snapshot_digest: str, recipe_hash: str, base_fingerprint: str) -> str:
    """Same snapshot + recipe + base = same job id (so a rerun resumes or is a no-op)."""
    key = f"{snapshot_digest}|{recipe_hash}|{base_fingerprint}"
    return cfg.job_id or f"job-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------- 1. ingest, and the job's identity


def open_job(cfg: JobConfig) -> tuple[JobContext, IngestResult]:
    """Describe the base (its configs and fingerprint, not its weights) and take the uploads'
    snapshot, name the job and open its MLflow run (the job's first log line says both), then ingest
    that snapshot (validation, quarantine, lazy examples)."""
    started = datetime.now(timezone.utc)
    model_uri = resolve_model_uri(cfg.model.uri, cfg.model.tiny_cache)
    base = describe_base(model_uri, cfg.storage)
    recipe_hash = cfg.train.result_hash()  # the recipe (and warm start when on): part of every concept's identity
    taken = take_snapshot(cfg.ingest, cfg.storage)
    digests = taken[0].digests()
    snapshot_digest = hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(digests.items())).encode()).hexdigest()[:16]
    paths = JobPaths.of(cfg, job_id_for(cfg, snapshot_digest, recipe_hash, base.fingerprint))

    # MLflow's registry resolves `models:/m-...` sources through the process-wide tracking URI (a
    # bare sqlite store would otherwise look in ./mlruns): this job process talks to one MLflow.
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    connection = MlflowConnection(cfg.mlflow.tracking_uri, experiment_name=cfg.mlflow.experiment)
    runs = JobRuns(connection)
    submission_id = ray_submission_id()
    run_id = runs.start(JobRunSpec(
        job_id=paths.job_id, snapshot_uri=cfg.ingest.uploads_uri, snapshot_digest=snapshot_digest, config_hash=recipe_hash,
        base_model_id=base.model_id, base_fingerprint=base.fingerprint, zero_stage=cfg.train.deepspeed.zero_stage,
        ray_submission_id=submission_id, params=job_params(cfg),
    ))
    log.info("job %s, MLflow run %s%s", paths.job_id, run_id, f", Ray submission {submission_id}" if submission_id else "")

    log.info("[1/5] ingest: %d concept folders (%d files) in %s", len(taken[0].concepts),
             sum(len(c.objects) for c in taken[0].concepts), cfg.ingest.uploads_uri)
    features = (
        VisionEncoderFeatures(model_uri, cfg.storage, cfg.ingest.vit_size)
        if cfg.hard_negative_features == "vision_encoder"
        else colour_histogram_features
    )
    try:
        ingest = build_ingest(cfg.ingest, cfg.storage, feature_fn=features, snapshot=taken)
    except BaseException:
        runs.end(run_id, "FAILED")  # the job stops before it has a summary: its run says so
        raise

    summary = JobSummary(job_id=paths.job_id, started_at=started, snapshot_uri=cfg.ingest.uploads_uri,
                         config_hash=recipe_hash, quarantined_objects=len(ingest.quarantine.rows))
    accepted = {c.concept_key for c in ingest.concepts}
    for row in ingest.quarantine.rows:
        key = f"{row.tenant}/{row.concept}" if row.tenant and row.concept else None
        if key and key not in accepted:
            summary.add(ConceptOutcome(concept_key=key, outcome="quarantined", reason=f"{row.reason}: {row.message}"))
    ingest.quarantine.write(paths.quarantine, cfg.storage)
    registry = ConceptRegistry(connection, prefix=cfg.mlflow.registry_prefix)
    summary.run_id = run_id
    ctx = JobContext(cfg, paths, model_uri, base, recipe_hash, runs, run_id, registry, summary)
    return ctx, ingest


# ---------------------------------------------------------------- 2. select


def select(ctx: JobContext, ingest: IngestResult) -> JobPlan:
    """Skip what is registered, register what is exported, train the rest.

    A trained concept is identified by (data digest, recipe hash, base fingerprint): a change of
    any of them trains a new version; the summary says which one changed."""
    art_fs, art_root = filesystem_for(ctx.cfg.artifacts.root, ctx.cfg.storage)
    selection = JobPlan()
    concepts = [TrainConcept(ConceptId.parse(c.concept_key), c.display_name, c.class_word, c.data_digest,
                             ctx.recipe_hash, ctx.base.fingerprint) for c in ingest.concepts]
    # Every concept's versions in a few paged searches (not two requests per concept: 5,000 models scale).
    registered = ctx.registry.versions_of(ctx.registry.model_name(concept.id) for concept in concepts)
    for concept in concepts:
        name = ctx.registry.model_name(concept.id)
        existing = registered[name].matching(concept.data_digest, concept.recipe_hash, concept.base_fingerprint)
        if existing is not None:
            ctx.summary.add(ConceptOutcome(concept_key=concept.id.key, outcome="skipped", model_name=name,
                                           version=str(existing.version), why=SKIP_REASON))
            continue
        selection.why[concept.id] = why_train(registered[name].latest(), concept)
        if artifact_exists(art_fs, art_root, concept):
            selection.to_register.append(concept)  # exported by an earlier run that could not register it
            selection.why[concept.id] += "; trained by an earlier run, registered now"
        else:
            selection.to_train.append(warm_started(ctx, concept, registered[name].latest(), selection.why))
    counts = ctx.summary.counts()
    log.info("[2/5] select: %d to train, %d exported but unregistered, %d skipped, %d quarantined",
             len(selection.to_train), len(selection.to_register), counts["skipped"], counts["quarantined"])
    return selection


def warm_started(ctx: JobContext, concept: TrainConcept, latest, why: dict) -> TrainConcept:
    """With `train.warm_start`, a concept with a registered version on this base starts from that
    version's tokens (its artifact); the summary's why says which version."""
    if not ctx.cfg.train.warm_start or latest is None or latest.tags.get(names.TAG_BASE_FINGERPRINT) != concept.base_fingerprint:
        return concept
    tags = latest.tags
    source = artifact_subpath(concept.id, tags.get(names.TAG_DATA_DIGEST, ""), tags.get(names.TAG_CONFIG_HASH, ""),
                              concept.base_fingerprint)
    why[concept.id] += f"; starts from v{latest.version}'s tokens (warm start)"
    return dataclasses.replace(concept, warm_start=source)


def why_train(latest, concept: TrainConcept) -> str:
    """What differs from the concept's newest registered version (`latest`, None for a new concept)."""
    if latest is None:
        return "new concept"
    tags = latest.tags
    changed = [what for what, tag, value in (
        ("data", names.TAG_DATA_DIGEST, concept.data_digest),
        ("recipe", names.TAG_CONFIG_HASH, concept.recipe_hash),
        ("base model", names.TAG_BASE_FINGERPRINT, concept.base_fingerprint),
    ) if tags.get(tag) != value]
    return f"{', '.join(changed) or 'nothing'} changed since v{latest.version}"


def note_registered_by(ctx: JobContext) -> None:
    """After waiting for another run of this job: the concepts registered meanwhile say by whom."""
    client = ctx.registry.client
    started_ms = ctx.summary.started_at.timestamp() * 1000
    for outcome in ctx.summary.concepts:
        if outcome.outcome == "skipped" and outcome.model_name and outcome.version:
            version = ctx.registry.mlflow.call("get version", client.get_model_version, outcome.model_name, outcome.version)
            if version.creation_timestamp >= started_ms:
                outcome.why = f"{SKIP_REASON}: {registered_by(version)}"


def take_over_held(ctx: JobContext, selection: JobPlan, held) -> None:
    """The concepts another live job held when this one started: wait for each, then skip it
    (registered), register it (exported, not registered) or leave it pending (a rerun trains it)."""
    art_fs, art_root = filesystem_for(ctx.paths.artifact_root, ctx.cfg.storage)
    later = JobPlan()
    for item in held:
        c = item.concept
        holder = ctx.leases.wait_released(item)
        name = ctx.registry.model_name(c.id)
        existing = ctx.registry.find_version(name, c.data_digest, c.recipe_hash, c.base_fingerprint)
        if existing is not None:
            ctx.summary.add(ConceptOutcome(concept_key=c.id.key, outcome="skipped", model_name=name,
                                           version=str(existing.version), why=f"{SKIP_REASON}: {registered_by(existing)}"))
        elif artifact_exists(art_fs, art_root, c) and ctx.leases.acquire(c) is None:
            later.to_register.append(c)
            later.why[c.id] = f"{selection.why.get(c.id, '')}; exported by job {holder.job_id} run {holder.run_id}, registered now"
        else:
            ctx.summary.add(ConceptOutcome(concept_key=c.id.key, outcome="pending", why=selection.why.get(c.id, ""),
                                           reason=f"{holder.describe()} held it and did not register it; a rerun trains it"))
    if later.to_register:
        log.info("[5/5] register: %d concepts another job exported", len(later.to_register))
        evaluate_and_register(ctx, later)


def write_training_examples(ctx: JobContext, ingest: IngestResult, selection: JobPlan) -> None:
    """Materialise the examples of the concepts this job trains or evaluates (once per job id)."""
    needs = selection.to_train + (selection.to_register if ctx.cfg.evaluation.enabled else [])
    ex_fs, ex_path = filesystem_for(ctx.paths.examples, ctx.cfg.storage)
    if needs and ex_fs.get_file_info(ex_path).type.name == "NotFound":
        wanted = {c.id.key for c in needs}
        write_examples(ingest.dataset.filter(lambda r: r["concept_key"] in wanted), ex_fs, ex_path)


# ---------------------------------------------------------------- 3. train


def train(ctx: JobContext, concepts: list[TrainConcept], planned: list[TrainConcept]) -> list[TrainConcept]:
    """Train on Ray; returns the concepts whose artifact exists afterwards (the others fail).

    `planned` is every concept this job brings to a registered version, including those an earlier
    submission already exported: the Ray run's packs and name come from it, so a resubmitted job
    resumes the same run where it stopped."""
    result = run_training(
        job_id=ctx.paths.job_id, concepts=concepts, model_uri=ctx.model_uri, examples_uri=ctx.paths.examples,
        artifact_root=ctx.paths.artifact_root, run_storage_uri=ctx.paths.runs_root, storage=ctx.cfg.storage,
        cfg=ctx.cfg.train, hidden_size=ctx.base.hidden_size, num_layers=ctx.base.num_layers,
        exclude_epochs=ctx.held_out_epochs, planned=planned,
    )
    if result.error:
        log.error("training ended with an error: %s", result.error)
    art_fs, art_root = filesystem_for(ctx.paths.artifact_root, ctx.cfg.storage)
    trained = []
    for c in concepts:
        if artifact_exists(art_fs, art_root, c):
            trained.append(c)
        else:
            ctx.summary.add(ConceptOutcome(concept_key=c.id.key, outcome="failed",
                                           reason="training did not produce an artifact (see the job log)"))
    return trained


# ---------------------------------------------------------------- 4 + 5. evaluate and register


def evaluate_and_register(ctx: JobContext, selection: JobPlan) -> None:
    """Evaluation in this process, one concept at a time, or on `evaluation.actors` Ray actors (then
    this process loads no weights); each concept's registration on a bounded thread pool as soon as
    its evaluation ends (`pipelines.register.stage`); one failure never stops the others."""
    from pipelines.evaluate.actors import evaluations

    register_stage.evaluate_and_register(ctx, selection.to_register, selection.why,
                                         evaluations(ctx, selection.to_register, evaluate))


@dataclass
class Evaluation:
    metrics: dict[str, float] = field(default_factory=dict)
    pictures: dict = field(default_factory=dict)  # name -> PIL image


def evaluate(ctx: JobContext, c: TrainConcept, judge=None) -> Evaluation:
    """Held-out metrics and sample pictures of a trained concept (empty when evaluation is off)."""
    cfg = ctx.cfg
    if not cfg.evaluation.enabled:
        return Evaluation()
    from omnipersona.infer.engine import Persona
    from omnipersona.model.sampling import FlowSampling
    from pipelines.evaluate.benchmark import benchmark_metrics
    from pipelines.evaluate.heldout import heldout_metrics, sample_pictures

    art_fs, path = filesystem_for(ctx.paths.artifact(c.id, c.data_digest, c.recipe_hash, c.base_fingerprint), cfg.storage)
    artifact = ConceptArtifact.load(path, filesystem=art_fs, expected_fingerprint=ctx.bundle.fingerprint)
    persona = Persona.from_artifacts(ctx.bundle, [artifact], image_size=cfg.ingest.vit_size,
                                     sampling=FlowSampling(num_steps=cfg.evaluation.sampling_steps))
    # The concept's held-out eval set when the job has one (material its training never saw in any
    # form: the OmniPBench-style harness); else the gate's epoch: its own images held out of training
    # (or, for a concept with too few to spare, fresh augmentations of its training images: its
    # summary notes say which).
    metrics = benchmark_metrics(cfg.evaluation, cfg.storage, persona, c.id, cfg.ingest.vit_size, judge)
    pictures = {}
    if not metrics or cfg.evaluation.sample_images:
        ex_fs, ex_path = filesystem_for(ctx.paths.examples, cfg.storage)
        pool = read_pools(ex_fs, ex_path, [c.id.key], only_epochs=ctx.held_out_epochs or None)[0]
        if not metrics:
            metrics = heldout_metrics(persona, artifact.manifest.display_name, pool.examples, cfg.evaluation.max_examples)
        if cfg.evaluation.sample_images:
            pictures = sample_pictures(persona, artifact.manifest.display_name, pool.examples)
    return Evaluation(metrics, pictures)


# ---------------------------------------------------------------- summary


def finish_job(ctx: JobContext) -> None:
    """This run's summary in the work folder (`runs/<run id>/`) and in its MLflow run; the run ends
    FAILED when a concept failed or is pending, so the MLflow UI shows it too."""
    ctx.summary.driver = DriverUse.now(base_weights_loaded=base_weights_loaded_here())
    summary = ctx.summary.finish()

    def write() -> None:
        for uri, text in ((ctx.paths.summary_json(ctx.run_id), summary.to_json()),
                          (ctx.paths.summary_markdown(ctx.run_id), summary.to_markdown())):
            fs, path = filesystem_for(uri, ctx.cfg.storage)
            write_bytes_atomic(fs, path, text.encode())

    write()  # first: the work store holds the summary even if MLflow never answers again
    try:
        if ctx.mlflow_down and not ctx.registry.mlflow.reachable():
            raise ConnectionError(f"MLflow at {ctx.cfg.mlflow.tracking_uri} is unreachable")
        ctx.runs.log_summary(ctx.run_id, summary.to_json(), summary.to_markdown(), summary.counts())
        ctx.runs.end(ctx.run_id, "FINISHED" if summary.complete else "FAILED")
    except Exception as exc:  # noqa: BLE001 - the run's record is this summary; the job's outcome stands
        summary.mlflow_error = (f"the job's MLflow run {ctx.run_id} has neither this summary nor its end state "
                                f"({type(exc).__name__}: {str(exc)[:300]}); it shows RUNNING")
        log.error("could not record the summary in MLflow: %s", summary.mlflow_error)
        write()
