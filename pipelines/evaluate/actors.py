"""Evaluation on Ray actors: each actor loads the base (and the judge) once and evaluates the
concepts it is handed, so the job's driver loads no model weights and N actors evaluate N concepts
at once — on GPUs where the cluster has them (`evaluation.gpus_per_actor`).

`evaluations(...)` yields each concept with its evaluation in the order they finish (or the
exception it raised, or None when it was not evaluated because MLflow went down meanwhile: the
caller marks it pending registration). With `evaluation.actors: 0` the driver evaluates, one
concept at a time, as before.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("omnipersona.job")


@dataclass
class EvaluationContext:
    """What `evaluate(ctx, concept, judge)` reads of the job, picklable to an actor (the job context
    itself holds MLflow clients and leases): the config, the paths and the held-out epochs; the
    base is loaded where this object is used, once per process."""

    cfg: Any  # pipelines.config.JobConfig
    paths: Any  # pipelines.paths.JobPaths
    model_uri: str
    held_out_epochs: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, ctx) -> "EvaluationContext":
        return cls(ctx.cfg, ctx.paths, ctx.model_uri, list(ctx.held_out_epochs))

    @property
    def bundle(self):
        from pipelines.model_store import load_base

        return load_base(self.model_uri, self.cfg.storage)


class ConceptEvaluator:
    """One evaluation actor: the base and the judge loaded once, then one concept per call."""

    def __init__(self, context: EvaluationContext, evaluate: Callable):
        from pipelines.evaluate.benchmark import load_judge
        from pipelines.threads import use_granted_cpus

        use_granted_cpus(context.cfg.evaluation.cpus_per_actor)
        self.context, self.evaluate_fn = context, evaluate
        self.context.bundle  # noqa: B018 - load the base now, not inside the first concept's evaluation
        self.judge = load_judge(context.cfg.evaluation, context.cfg.ingest.vit_size, log=log.info)

    def evaluate(self, concept):
        return self.evaluate_fn(self.context, concept, self.judge)


def evaluations(ctx, concepts: list, evaluate: Callable) -> Iterator[tuple[Any, Any]]:
    """(concept, evaluation | exception | None) for every concept, as they finish.

    ``evaluate(ctx_like, concept, judge)`` is the job's evaluation of one concept. With
    `evaluation.actors` > 0 it runs on that many Ray actors (each restarted once if its process dies),
    else in this process."""
    settings = ctx.cfg.evaluation
    ordered = sorted(concepts, key=lambda c: c.id)
    if not ordered:
        return
    if settings.actors == 0 or not settings.enabled:
        yield from _in_this_process(ctx, ordered, evaluate)
    else:
        yield from _on_actors(ctx, ordered, evaluate, min(settings.actors, len(ordered)))


def _in_this_process(ctx, concepts: list, evaluate: Callable) -> Iterator[tuple[Any, Any]]:
    from pipelines.evaluate.benchmark import load_judge

    judge = load_judge(ctx.cfg.evaluation, ctx.cfg.ingest.vit_size, log=log.info) if ctx.cfg.evaluation.enabled else None
    for c in concepts:
        if ctx.mlflow_down:
            yield c, None
            continue
        try:
            yield c, evaluate(ctx, c, judge)
        except Exception as exc:  # noqa: BLE001 - reported per concept, the batch goes on
            yield c, exc


def _on_actors(ctx, concepts: list, evaluate: Callable, count: int) -> Iterator[tuple[Any, Any]]:
    import ray

    settings = ctx.cfg.evaluation
    actor_class = ray.remote(ConceptEvaluator).options(
        num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor, max_restarts=1, max_task_retries=1)
    context = EvaluationContext.of(ctx)
    actors = [actor_class.remote(context, evaluate) for _ in range(count)]
    log.info("[4/5] evaluate: %d evaluation actors (%g CPU, %g GPU each)", count, settings.cpus_per_actor,
             settings.gpus_per_actor)
    todo, idle, running = deque(concepts), list(actors), {}
    try:
        while todo or running:
            while idle and todo and not ctx.mlflow_down:
                actor = idle.pop()
                concept = todo.popleft()
                running[actor.evaluate.remote(concept)] = (concept, actor)
            while ctx.mlflow_down and todo:  # the rest wait for the next run
                yield todo.popleft(), None
            if not running:
                continue
            (ready,), _ = ray.wait(list(running), num_returns=1)
            concept, actor = running.pop(ready)
            idle.append(actor)
            try:
                result = ray.get(ready)
            except ray.exceptions.RayTaskError as exc:  # the evaluation raised: its own exception
                result = exc.as_instanceof_cause()
            except ray.exceptions.RayError as exc:  # the actor died twice
                result = exc
            yield concept, result
    finally:
        for actor in actors:
            ray.kill(actor)
