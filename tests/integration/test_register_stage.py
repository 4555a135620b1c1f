"""The job's evaluate and register stages (`pipelines.personalize.evaluate_and_register`, on
`pipelines.register.stage`) against the MLflow server backed by PostgreSQL: evaluation stays in the
calling thread, one concept at a time, and each registration goes to a bounded thread pool as soon
as its evaluation ends, so registrations overlap the next evaluations and each other — with the
outcomes, versions, progress lines, released leases and training curves of one-at-a-time.

Break-checked: with the stage's `pool.submit(...)` replaced by registering in the calling thread
(`record(c, register_and_release(ctx, c, evaluation))`, the loop as it was before issue 17),
`test_registrations_overlap_the_next_evaluations_and_each_other` fails (`assert 1 < peak_4`: one
registration at a time with 4 threads); with `concept_failed` never asking whether MLflow is
reachable, `test_mlflow_down_leaves_the_concepts_pending_registration_with_their_leases` fails
(`failed` instead of `pending_registration`)."""
from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from omnipersona.concepts.artifact import artifact_subpath
from omnipersona.identity import ConceptId
from pipelines import personalize
from pipelines.register import ConceptRegistry, JobRuns, JobRunSpec, MlflowConnection, RetryPolicy
from pipelines.register.job_runs import CURVE_METRIC
from pipelines.summary import JobSummary
from pipelines.train.runner import TrainConcept
from tests.integration.test_register import GATE, unique, write_artifact

pytestmark = pytest.mark.integration

FINGERPRINT, RECIPE = "fp-tiny", "cfg0001"  # what test_register's artifacts carry
# concept -> its evaluation's recognition accuracy (None: the evaluation raises)
CONCEPTS = {"a": 0.9, "b": 0.9, "low": 0.2, "c": 0.9, "broken": None, "d": 0.9, "again": 0.9, "missing": 0.9}
EXPECTED = {  # what each concept comes to, as one-at-a-time registration gives it: (outcome, version, promoted)
    "a": ("done", "1", True), "b": ("done", "1", True), "c": ("done", "1", True), "d": ("done", "1", True),
    "low": ("done", "1", False),  # the gate failed: a candidate
    "broken": ("failed", None, None),  # its evaluation raised
    "missing": ("failed", None, None),  # no artifact: its registration raised
    "again": ("skipped", "1", None),  # registered before the job
}


@pytest.fixture(scope="module")
def registry(mlflow_server_postgres) -> ConceptRegistry:
    return ConceptRegistry(MlflowConnection(mlflow_server_postgres.tracking_uri, experiment_name=unique("test-stage"),
                                            retry=RetryPolicy(attempts=2, initial_delay_s=0.1)),
                           prefix=f"st{unique('p')[-6:]}")


class Leases:
    def __init__(self):
        self.released = []

    def release(self, concept):
        self.released.append(concept.id.concept)


def job(registry, tmp_path, threads: int):
    """A job context whose concepts (`CONCEPTS`) are exported under `tmp_path`, and its plan."""
    tenant = unique("stage")
    root = tmp_path / "artifacts"
    concepts = [TrainConcept(ConceptId(tenant, name), name.title(), "dog", f"d-{name}", RECIPE, FINGERPRINT)
                for name in CONCEPTS]
    for k, c in enumerate(concepts):
        if c.id.concept == "missing":
            continue
        folder = root / artifact_subpath(c.id, c.data_digest, RECIPE, FINGERPRINT)
        artifact = write_artifact(folder, tenant, c.id.concept, c.data_digest, seed=k)
        artifact.manifest.extra["loss_history"] = {"step": [0, 1], "loss": [2.0, 1.5]}
        artifact.save(folder)
    runs = JobRuns(registry.mlflow)
    run_id = runs.start(JobRunSpec(job_id=unique("job"), snapshot_uri="s3://uploads", snapshot_digest="snap",
                                   config_hash=RECIPE, base_model_id="bagel-tiny", base_fingerprint=FINGERPRINT,
                                   zero_stage=2))
    again = next(c for c in concepts if c.id.concept == "again")
    registry.register_concept(run_id, root / artifact_subpath(again.id, again.data_digest, RECIPE, FINGERPRINT),
                              metrics={"recognition_accuracy": 0.9}, gate=GATE)  # registered before the job
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(
            mlflow=SimpleNamespace(registration_threads=threads, tracking_uri=registry.mlflow.tracking_uri),
            evaluation=SimpleNamespace(eval_sets_uri=None, judge=None, enabled=True, actors=0), ingest=SimpleNamespace(vit_size=64),
            storage=None, gate=GATE, model=SimpleNamespace(uri="hf://bagel-tiny")),
        paths=SimpleNamespace(artifact=lambda cid, digest, recipe, fp: str(root / artifact_subpath(cid, digest, recipe, fp)),
                              uploads=lambda cid: f"s3://uploads/{cid.key}"),
        registry=registry, runs=runs, run_id=run_id, leases=Leases(), mlflow_down=None,
        summary=JobSummary(job_id="job-stage", started_at=datetime.now(timezone.utc), snapshot_uri="s3://uploads",
                           config_hash=RECIPE),
    )
    return ctx, personalize.JobPlan(to_register=list(reversed(concepts)), why={c.id: "new concept" for c in concepts})


class Gauge:
    """How many threads are inside ``with gauge:`` now, and the most at once."""

    def __init__(self):
        self.now = self.most = 0
        self._guard = threading.Lock()

    def __enter__(self):
        with self._guard:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc):
        with self._guard:
            self.now -= 1


def run_stage(ctx, plan, monkeypatch):
    """The stage, with registrations counted and evaluations of ~50 ms that note how many
    registrations were running when they started; returns (most registrations at once, those notes)."""
    registering, during_evaluations = Gauge(), []
    register = ctx.registry.register_concept

    def counted(*args, **kwargs):
        with registering:
            return register(*args, **kwargs)

    def evaluate(ctx_, c, judge=None):
        assert threading.current_thread() is threading.main_thread()  # evaluation stays in the driver's thread
        during_evaluations.append(registering.now)
        time.sleep(0.05)
        accuracy = CONCEPTS[c.id.concept]
        if accuracy is None:
            raise RuntimeError("evaluation broke")
        return personalize.Evaluation({"recognition_accuracy": accuracy})

    monkeypatch.setattr(ctx.registry, "register_concept", counted)
    monkeypatch.setattr(personalize, "evaluate", evaluate)
    try:
        personalize.evaluate_and_register(ctx, plan)
    finally:
        monkeypatch.undo()
    return registering.most, during_evaluations


def outcomes(ctx) -> dict[str, tuple]:
    return {o.concept_key.split("/")[1]: (o.outcome, o.version, o.promoted) for o in ctx.summary.concepts}


def test_registrations_overlap_the_next_evaluations_and_each_other(registry, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="omnipersona.job")
    results = {}
    for threads in (1, 4):
        ctx, plan = job(registry, tmp_path / f"t{threads}", threads)
        caplog.clear()
        peak, during_evaluations = run_stage(ctx, plan, monkeypatch)
        results[threads] = (ctx, peak, during_evaluations)

        assert outcomes(ctx) == EXPECTED, threads  # as one at a time
        reasons = {o.concept_key.split("/")[1]: o.reason for o in ctx.summary.concepts}
        assert reasons["low"].startswith("gate: ") and "evaluation broke" in reasons["broken"]
        assert reasons["missing"].startswith("ArtifactNotFoundError")
        assert all(o.why == "new concept" or o.outcome == "skipped" for o in ctx.summary.concepts)
        # A lease is released once its concept is registered (or found registered), never after a failure.
        assert sorted(ctx.leases.released) == sorted(k for k, (outcome, _, _) in EXPECTED.items() if outcome != "failed")
        # One progress line per concept, numbered as registrations finish.
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[5/5] register ")]
        numbers = [re.match(r"\[5/5\] register (\d+)/(\d+): \S+ -> \w+", line).groups() for line in lines]
        assert numbers == [(str(i), str(len(CONCEPTS))) for i in range(1, len(CONCEPTS) + 1)], lines
        assert any(re.search(r"/a -> done v1 \(champion\)$", line) for line in lines), lines
        assert any(re.search(r"/low -> done v1 \(candidate\)$", line) for line in lines), lines
        # The training curves are in each new version's registration run.
        client = MlflowClient(registry.mlflow.tracking_uri)
        for o in ctx.summary.concepts:
            if o.outcome == "done":
                version = client.get_model_version(o.model_name, o.version)
                assert [m.value for m in client.get_metric_history(version.run_id, CURVE_METRIC)] == [2.0, 1.5]

    _, peak_1, evaluations_1 = results[1]
    _, peak_4, evaluations_4 = results[4]
    assert peak_1 == 1  # registration_threads = 1: one at a time
    assert 1 < peak_4 <= 4, peak_4  # several at once, bounded
    # Registrations ran while later concepts were evaluated (with one thread too).
    assert max(evaluations_1) >= 1 and max(evaluations_4) >= 1, (evaluations_1, evaluations_4)


def test_mlflow_down_leaves_the_concepts_pending_registration_with_their_leases(registry, tmp_path, monkeypatch):
    ctx, plan = job(registry, tmp_path, threads=4)

    def down(*args, **kwargs):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(ctx.registry, "register_concept", down)
    monkeypatch.setattr(ctx.registry.mlflow, "reachable", lambda *a, **kw: False)
    monkeypatch.setattr(personalize, "evaluate", lambda ctx_, c, judge=None: personalize.Evaluation())
    personalize.evaluate_and_register(ctx, plan)

    assert {o.outcome for o in ctx.summary.concepts} == {"pending_registration"}
    assert len(ctx.summary.concepts) == len(CONCEPTS)
    assert all("MLflow unreachable (ConnectionError: connection refused)" in o.reason for o in ctx.summary.concepts)
    assert ctx.mlflow_down == "ConnectionError: connection refused" and ctx.leases.released == []
