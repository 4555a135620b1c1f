"""Evaluation on Ray actors (pipelines/evaluate/actors.py): each actor loads the base once and
evaluates the concepts it is handed; results come back as they finish, a concept whose evaluation
raises comes back with its exception, and once MLflow is found down the rest are not evaluated."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from omnipersona.identity import ConceptId
from pipelines.config import JobConfig
from pipelines.evaluate.actors import evaluations

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def functions_by_value():
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def slow_evaluation(ctx, concept, judge):
    """Stands in for the job's `evaluate`: which process, whether the base was there, and whether
    another evaluation was running at the same time (each marks a file in the concept's rendezvous
    folder, then waits up to 60 s to see two marks: only concurrent evaluations both see them).
    Pickled by value to the actors: this test module is not importable there."""
    import os
    import time
    from pathlib import Path

    if concept.id.concept == "broken":
        raise ValueError("this concept's artifact is unreadable")
    folder = Path(concept.rendezvous)
    (folder / concept.id.concept).touch()
    deadline = time.monotonic() + 60
    while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"pid": os.getpid(), "fingerprint": ctx.bundle.fingerprint, "saw_another": len(list(folder.iterdir())) >= 2}


def job_context(tiny_bagel_dir, actors: int):
    cfg = JobConfig(model={"uri": str(tiny_bagel_dir)}, ingest={"uploads_uri": "/nowhere", "vit_size": 32, "vae_size": 32},
                    artifacts={"root": "/nowhere/c", "work": "/nowhere/w", "runs": "/nowhere/r"},
                    mlflow={"tracking_uri": "http://127.0.0.1:1"}, evaluation={"actors": actors, "cpus_per_actor": 0.5})
    return SimpleNamespace(cfg=cfg, paths=None, model_uri=str(tiny_bagel_dir), held_out_epochs=[], mlflow_down=None)


def concepts(*names, rendezvous=None):
    return [SimpleNamespace(id=ConceptId("acme", n), rendezvous=str(rendezvous)) for n in names]


def test_two_actors_evaluate_at_once_each_with_the_base_loaded_once(ray_session, tiny_bagel_dir, tmp_path):
    from pipelines import model_store

    calls_before = model_store._cached_bundle.cache_info()
    ctx = job_context(tiny_bagel_dir, actors=2)
    results = dict((c.id.concept, r) for c, r in
                   evaluations(ctx, concepts("a", "b", "c", "d", "broken", rendezvous=tmp_path), slow_evaluation))
    assert isinstance(results.pop("broken"), ValueError)
    assert len({r["pid"] for r in results.values()}) == 2 and os.getpid() not in {r["pid"] for r in results.values()}
    assert len({r["fingerprint"] for r in results.values()}) == 1
    assert results["a"]["saw_another"] and results["b"]["saw_another"], "the first two evaluations ran at once"
    calls_after = model_store._cached_bundle.cache_info()
    assert calls_after.hits + calls_after.misses == calls_before.hits + calls_before.misses, "this process loaded no base"


def test_once_mlflow_is_down_the_rest_are_not_evaluated(ray_session, tiny_bagel_dir, tmp_path):
    (tmp_path / "someone-else").touch()  # one evaluator: no one to wait for
    ctx = job_context(tiny_bagel_dir, actors=1)
    seen = []
    for c, result in evaluations(ctx, concepts("a", "b", "c", rendezvous=tmp_path), slow_evaluation):
        seen.append((c.id.concept, result is not None))
        ctx.mlflow_down = "ConnectionError: refused"  # found down after the first
    assert seen == [("a", True), ("b", False), ("c", False)]


def test_when_the_actors_cannot_start_every_concept_comes_back_with_the_reason(ray_session, tmp_path):
    ctx = job_context(tmp_path / "no-base-here", actors=2)
    results = list(evaluations(ctx, concepts("a", "b", "c", rendezvous=tmp_path), slow_evaluation))
    assert [c.id.concept for c, _ in results] == ["a", "b", "c"] or sorted(c.id.concept for c, _ in results) == ["a", "b", "c"]
    assert all(isinstance(r, Exception) for _, r in results), results


def test_without_actors_the_driver_evaluates_in_order(tiny_bagel_dir):
    ctx = job_context(tiny_bagel_dir, actors=0)
    order = [c.id.concept for c, _ in evaluations(ctx, concepts("b", "a"), lambda ctx, c, judge: c.id.concept)]
    assert order == ["a", "b"]
