"""An evaluation actor (pipelines/evaluate/actors.py `ConceptEvaluator`) runs as many torch threads
as CPUs Ray granted it, whatever OMP_NUM_THREADS the job's runtime env gives every worker (the
KubeRay job sets 8): one-CPU actors sharing a node must not each run a thread per core, and an
actor granted more CPUs uses them. Built in this process here (the constructor is what runs in
the actor), with the thread count restored after."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipelines.config import JobConfig
from pipelines.evaluate.actors import ConceptEvaluator, EvaluationContext

pytestmark = pytest.mark.integration


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def context(tiny_bagel_dir, cpus_per_actor: float) -> EvaluationContext:
    cfg = JobConfig(model={"uri": str(tiny_bagel_dir)}, ingest={"uploads_uri": "/nowhere", "vit_size": 32, "vae_size": 32},
                    artifacts={"root": "/nowhere/c", "work": "/nowhere/w", "runs": "/nowhere/r"},
                    mlflow={"tracking_uri": "http://127.0.0.1:1"},
                    evaluation={"actors": 2, "cpus_per_actor": cpus_per_actor})
    return EvaluationContext(cfg, None, str(tiny_bagel_dir))


@pytest.mark.parametrize(("cpus_per_actor", "threads"), [(1.0, 1), (0.5, 1), (3.0, 3)])
def test_an_evaluation_actor_runs_one_torch_thread_per_cpu_it_was_granted(tiny_bagel_dir, torch_threads, cpus_per_actor, threads):
    torch.set_num_threads(2)  # what the worker's environment gave it (OMP_NUM_THREADS, capped at the cores)
    evaluator = ConceptEvaluator(context(tiny_bagel_dir, cpus_per_actor), lambda ctx, concept, judge: torch.get_num_threads())
    assert evaluator.evaluate(SimpleNamespace()) == threads
