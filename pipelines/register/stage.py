"""The job's evaluate and register stages, overlapped: the driver's main thread takes each
concept's evaluation as it ends (evaluated there one concept at a time, or on Ray actors:
`pipelines.evaluate.actors`) and hands the concept's registration to a `RegistrationPool`
(`mlflow.registration_threads` at once; a ``sqlite:`` tracking URI one at a time), so
registrations overlap the next evaluations and each other.

What each concept comes to (`ConceptOutcome`, added to the summary in the main thread as its
registration finishes): done (a registered version; `champion` moved if the gate passed), skipped
(another registration of the same artifact won), failed (its evaluation or registration raised; the
others go on), pending_registration (MLflow was found unreachable: `ctx.mlflow_down` says why, and
the concepts not yet registered wait for the next run, which registers them without training).
A registered concept's lease is released and its training curves are logged in its registration run.

``ctx`` is the job's `pipelines.personalize.JobContext`."""
from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, Mapping

from omnipersona.concepts.artifact import ConceptArtifact
from omnipersona.identity import ConceptId
from pipelines.register.registry import RegistrationPool
from pipelines.storage import filesystem_for
from pipelines.summary import ConceptOutcome

log = logging.getLogger("omnipersona.job")

SKIP_REASON = "already registered: same data, recipe and base"
_down_guard = threading.Lock()  # registration threads and the main thread may find MLflow down at once


def evaluate_and_register(ctx, concepts: list, why: Mapping[ConceptId, str], evaluations: Iterable[tuple[Any, Any]]) -> None:
    """``evaluations`` yields each concept with its evaluation (metrics and pictures), the exception
    its evaluation raised, or None (not evaluated: MLflow went down), in the order they finish
    (`pipelines.evaluate.actors.evaluations`: in this process or on Ray actors); each concept's
    registration goes to the pool as soon as its evaluation arrives. Returns once every concept has
    its outcome in ``ctx.summary``. One failure never stops the others."""
    total, finished = len(concepts), [0]

    def record(c, outcome: ConceptOutcome) -> None:  # in this thread: the summary and the progress line
        finished[0] += 1
        outcome.why = outcome.why or why.get(c.id, "")
        ctx.summary.add(outcome)
        version = f" v{outcome.version}" if outcome.version else ""
        champion = {True: " (champion)", False: " (candidate)"}.get(outcome.promoted, "")
        log.info("[5/5] register %d/%d: %s -> %s%s%s", finished[0], total, c.id.key, outcome.outcome, version, champion)

    # At most `threads` registering and as many waiting: the driver holds few evaluations' pictures.
    threads = ctx.cfg.mlflow.registration_threads
    with RegistrationPool(ctx.registry.mlflow, threads, on_done=record, backlog=threads) as pool:
        for c, evaluation in evaluations:
            pool.collect()  # the registrations that finished meanwhile, in the order they did
            if ctx.mlflow_down or evaluation is None:  # the rest wait for the next run (no minutes of retries each)
                record(c, pending_registration(c, ctx.mlflow_down or "MLflow unreachable"))
                continue
            if isinstance(evaluation, Exception):  # reported per concept, the batch goes on
                record(c, concept_failed(ctx, c, evaluation))
                continue
            pool.submit(c, lambda c=c, evaluation=evaluation: register_and_release(ctx, c, evaluation))


def register_and_release(ctx, c, evaluation) -> ConceptOutcome:
    """On a registration thread: register the concept, then release its lease (never raises)."""
    if ctx.mlflow_down:  # found down while this one waited for a thread
        return pending_registration(c, ctx.mlflow_down)
    try:
        outcome = register(ctx, c, evaluation)
        if ctx.leases is not None:
            ctx.leases.release(c)
        return outcome
    except Exception as exc:  # noqa: BLE001 - reported per concept, the batch goes on
        return concept_failed(ctx, c, exc)


def concept_failed(ctx, c, exc: Exception) -> ConceptOutcome:
    """A concept's evaluation or registration raised: `pending_registration` when MLflow is down
    (then `ctx.mlflow_down` says why, and the concepts after it wait for the next run), else `failed`."""
    if not ctx.registry.mlflow.reachable():
        with _down_guard:
            first = ctx.mlflow_down is None
            if first:
                ctx.mlflow_down = f"{type(exc).__name__}: {exc}"
        if first:
            log.error("MLflow at %s is unreachable (%s): %s and the concepts after it stay exported, pending "
                      "registration; rerun once MLflow is back", ctx.cfg.mlflow.tracking_uri, ctx.mlflow_down, c.id.key)
        return pending_registration(c, ctx.mlflow_down)
    log.exception("concept %s failed", c.id.key, exc_info=exc)
    return ConceptOutcome(concept_key=c.id.key, outcome="failed", reason=f"{type(exc).__name__}: {exc}")


def pending_registration(c, error: str) -> ConceptOutcome:
    return ConceptOutcome(concept_key=c.id.key, outcome="pending_registration",
                          reason=f"MLflow unreachable ({error[:300]}); the artifact is exported: the next run registers it "
                                 "without training")


def register(ctx, c, evaluation) -> ConceptOutcome:
    """A new registered version (the gate decides `champion`), or `skipped` if one exists.
    ``evaluation`` has the concept's ``metrics`` and ``pictures``."""
    art_fs, path = filesystem_for(ctx.paths.artifact(c.id, c.data_digest, c.recipe_hash, c.base_fingerprint), ctx.cfg.storage)
    res = ctx.registry.register_concept(ctx.run_id, path, filesystem=art_fs, metrics=evaluation.metrics,
                                        images=evaluation.pictures, gate=ctx.cfg.gate, data_uri=ctx.paths.uploads(c.id),
                                        base_model_uri=ctx.cfg.model.uri)
    if res.status == "registered" and res.model_id:
        # The concept's training curves, step by step, in its own registration run (a child of the job run).
        history = ConceptArtifact.load(path, filesystem=art_fs).manifest.extra.get("loss_history", {})
        run_id = res.run_id or ctx.runs.source_run_of(res.model_id)
        ctx.runs.log_training_curves(run_id, history, fresh=res.fresh_run)
    if res.status == "already_registered":
        return ConceptOutcome(concept_key=c.id.key, outcome="skipped", model_name=res.model_name, version=str(res.version),
                              why=SKIP_REASON)
    reason = "" if res.gate is None or res.gate.passed else "gate: " + "; ".join(res.gate.reasons)
    return ConceptOutcome(concept_key=c.id.key, outcome="done", model_name=res.model_name, version=str(res.version),
                          promoted=res.promoted, metrics=evaluation.metrics, reason=reason)
