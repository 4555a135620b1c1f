"""The train stage's plan and run identity, and its run log, without Ray."""
import dataclasses

import pytest

from omnipersona.identity import ConceptId
from pipelines.train.config import ScalingSettings, TrainStageConfig
from pipelines.train.run_log import RunLog, read_run_log
from pipelines.train.runner import TrainConcept
from pipelines.train.stage import plan_packs, run_name


def concepts(n: int) -> list[TrainConcept]:
    return [TrainConcept(ConceptId.parse(f"acme/c{i}"), f"c{i}", "dog", f"data{i}", "recipe", "base") for i in range(n)]


def test_the_run_name_is_the_same_for_the_same_plan_and_differs_for_anything_a_checkpoint_depends_on():
    cfg = TrainStageConfig()
    planned = concepts(5)
    name = run_name("job", plan_packs(planned, 2), 2, cfg)
    assert name.startswith("job-")
    # The plan is made from every planned concept, in key order: the caller's order does not matter.
    assert run_name("job", plan_packs(planned[::-1], 2), 2, cfg) == name
    others = [
        run_name("job", plan_packs(planned[:4], 2), 2, cfg),  # fewer concepts planned
        run_name("job", plan_packs([dataclasses.replace(planned[0], data_digest="new")] + planned[1:], 2), 2, cfg),
        run_name("job", plan_packs(planned, 3), 3, cfg),
        run_name("job", plan_packs(planned, 2), 2, cfg.model_copy(update={"recipe": cfg.recipe.model_copy(update={"lr": 0.5})})),
        run_name("job", plan_packs(planned, 2), 2, cfg.model_copy(update={"scaling": ScalingSettings(num_workers=3)})),
        run_name("other", plan_packs(planned, 2), 2, cfg),
    ]
    assert name not in others and len(set(others)) == len(others)


def test_a_concept_planned_twice_is_refused():
    with pytest.raises(ValueError, match="planned twice"):
        plan_packs(concepts(2) + concepts(1), 2)


def test_run_log_records_come_back_by_kind_in_order_with_each_ranks_attempt(tmp_path):
    uri = str(tmp_path / "run")
    first = RunLog.open(uri, None, rank=1)
    first.add("start", world=2)
    first.add("export", concept="acme/c0")
    again = RunLog.open(uri, None, rank=1)  # a restarted worker of rank 1
    assert (first.attempt, again.attempt, RunLog.open(uri, None, rank=0).attempt) == (1, 2, 1)
    again.add("start", world=2)
    starts = read_run_log(uri, None, "start")
    assert [(r["rank"], r["attempt"], r["world"]) for r in starts] == [(1, 1, 2), (1, 2, 2)]
    assert [r["concept"] for r in read_run_log(uri, None, "export")] == ["acme/c0"]
    assert read_run_log(uri, None, "resume") == []
