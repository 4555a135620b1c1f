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


# ---------------------------------------------------------------- pack planning as the cluster grows

PAPER = dict(hidden=3584, layers=28, tokens_per_example=312)  # BAGEL-7B, a 224 px recognition sample


@pytest.mark.parametrize("budget", ["memory", "tokens"])
def test_a_workers_share_of_a_step_does_not_shrink_as_workers_are_added(budget):
    """All W workers train the same pack, each taking ceil(P * batch / W) of a step's examples. Sized
    from per-worker budgets, the pack grows with W and every worker keeps the same share; the old
    planner (one concept = ceil(batch / W) examples, fixed once W > batch) gave a worker 8 examples
    at W = 1 and one at W = 64 (checked by hand with it restored)."""
    from omnipersona.recipe import TrainConfig
    from pipelines.train.packs import examples_per_worker, plan_pack_size

    recipe = TrainConfig(batch_size=8, num_und_tokens=16, num_gen_tokens=16)
    per_example_mb = 312 * 28 * 3584 * 4 * 16 / 2**20
    limits = ({"memory_budget_mb": 8.5 * per_example_mb, "tokens_per_worker": None} if budget == "memory"
              else {"memory_budget_mb": 1e9, "tokens_per_worker": 8 * 312})
    shares, sizes = {}, {}
    for workers in (1, 8, 64, 512):
        sizes[workers] = plan_pack_size(**PAPER, recipe=recipe, num_workers=workers, max_pack=4096, **limits)
        shares[workers] = examples_per_worker(sizes[workers], recipe.batch_size, workers)
    assert set(shares.values()) == {8}, shares
    assert sizes == {1: 1, 8: 8, 64: 64, 512: 512}, sizes


def test_the_pack_stays_within_the_memory_budget_and_max_pack_size():
    from omnipersona.recipe import TrainConfig
    from pipelines.train.packs import activation_bytes_per_example, bank_bytes_per_concept, examples_per_worker, plan_pack_size

    recipe = TrainConfig(batch_size=2, num_und_tokens=4, num_gen_tokens=4)
    for workers in (1, 2, 3, 7):
        size = plan_pack_size(hidden=64, layers=2, recipe=recipe, tokens_per_example=160, num_workers=workers,
                              memory_budget_mb=16, tokens_per_worker=None, max_pack=10_000)
        used = size * bank_bytes_per_concept(64, recipe) + examples_per_worker(size, 2, workers) * activation_bytes_per_example(64, 2, 160)
        bigger = (size + 1) * bank_bytes_per_concept(64, recipe) + examples_per_worker(size + 1, 2, workers) * activation_bytes_per_example(64, 2, 160)
        assert used <= 16 * 2**20 < bigger, (workers, size)
    assert plan_pack_size(hidden=64, layers=2, recipe=recipe, tokens_per_example=160, num_workers=4, memory_budget_mb=16,
                          tokens_per_worker=None, max_pack=3) == 3
    # An explicit pack_size wins (capped by max_pack_size).
    from pipelines.train.stage import choose_pack_size

    assert choose_pack_size(TrainStageConfig(pack_size=6, max_pack_size=4), 64, 2) == 4
