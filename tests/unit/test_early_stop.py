"""Early stopping (`train.early_stopping`, issue 18): the stop rule, the held-out examples and loss,
and a pack in which one concept stops while the other goes on.

Break-checked by hand: with `PackTrainer._share` ignoring `stopped` (the stopped concept's examples
kept in the steps) `test_a_stopped_concept_leaves_the_steps...` failed (its losses after the stop);
with `train_pack` not loading the best check's tokens back it failed on the tokens; with a rank that
has no held-out example counting its stand-in at weight 1 the ranks test failed; with result_hash
ignoring the option the identity test failed."""
from __future__ import annotations

import math

import pytest
import torch

from omnipersona.concepts.samples import ConceptExample, SampleBuilder
from omnipersona.training import (
    ConceptPool,
    ConceptStop,
    EarlyStopper,
    PackModule,
    PackTrainer,
    StopRule,
    TrainConfig,
    heldout_examples,
    train_pack,
)
from tests.unit.test_concepts import new_bank, pool
from tests.unit.test_trainer import AveragingEngine

RULE = StopRule(check_every=2, patience=2, min_delta=0.01)


def run(values, rule=RULE, steps=100):
    c = ConceptStop()
    kept = [c.observe(2 * (i + 1), v, rule, steps) for i, v in enumerate(values)]
    return c, kept


def test_a_concept_stops_after_patience_checks_without_an_improvement_beyond_min_delta():
    c, kept = run([1.0, 0.9, 0.895, 0.92, 0.7])
    # 0.895 is below the best but not by more than min_delta: no improvement; 0.92 neither: stop at 8.
    assert kept == [True, True, False, False, False]
    assert (c.best, c.best_step, c.stopped_at) == (0.9, 4, 8)
    assert c.checks == [[2, 1.0], [4, 0.9], [6, 0.895], [8, 0.92]]  # a stopped concept records no more checks
    assert c.summary(100) == {"stopped_at_step": 8, "steps_run": 8, "steps_saved": 92, "best_step": 4,
                              "best_heldout_loss": 0.9, "checks": [[2, 1.0], [4, 0.9], [6, 0.895], [8, 0.92]]}


def test_an_improvement_resets_the_patience():
    c, _ = run([1.0, 1.0, 0.5, 0.6, 0.4, 0.45, 0.46])
    assert (c.best, c.best_step, c.stopped_at) == (0.4, 10, 14)


def test_no_held_out_examples_never_stops_and_a_stop_at_the_last_step_saves_nothing():
    c, kept = run([math.nan] * 5)
    assert not any(kept) and c.stopped_at is None and c.checks == [] and c.summary(10)["steps_saved"] == 0
    c, _ = run([1.0, 1.1, 1.2], steps=6)  # patience runs out at step 6, the last one: it ran every step
    assert c.stopped_at is None and c.summary(6) == {**c.summary(6), "steps_run": 6, "steps_saved": 0, "best_step": 2}


def test_the_rule_checks_every_check_every_steps_and_after_the_last():
    assert [s for s in range(1, 8) if StopRule(check_every=3).due(s, 7)] == [3, 6, 7]
    with pytest.raises(ValueError):
        StopRule(patience=0)


def test_the_stopper_reports_new_bests_and_stops_per_slot_and_round_trips_its_state():
    stopper = EarlyStopper(StopRule(check_every=1, patience=1), 3, 10)
    assert stopper.observe(1, [1.0, 1.0, math.nan]) == ([0, 1], [])
    assert stopper.observe(2, [0.5, 1.5, math.nan]) == ([0], [1])
    assert stopper.stopped == {1} and not stopper.all_stopped
    assert stopper.observe(3, [0.6, 0.1, math.nan], skip={1}) == ([], [0])
    again = EarlyStopper(stopper.rule, 3, 10)
    again.load_state(stopper.state())
    assert again.concepts == stopper.concepts and again.stopped == {0, 1}


def test_heldout_examples_are_capped_take_answers_in_turn_and_are_seeded_by_concept_only():
    p = pool("t/a", 0)  # recognition Yes and No, text_qa, t2i, edit
    many = ConceptPool("t/a", p.examples * 3)
    alone = heldout_examples([many], 4, seed=0)
    assert [ex.task for ex in alone] == ["edit", "recognition", "t2i", "text_qa"]
    assert [ex.answer for ex in heldout_examples([many], 8, seed=0) if ex.task == "recognition"] == ["Yes", "No"]
    in_pack = heldout_examples([None, ConceptPool("t/b", pool("t/b", 1).examples), many], 4, seed=0)
    mine = [ex for ex in in_pack if ex.slot == 2]
    assert [(ex.task, ex.seed) for ex in mine] == [(ex.task, ex.seed) for ex in alone]
    assert {ex.slot for ex in in_pack} == {1, 2}


def test_the_heldout_loss_of_w_ranks_is_the_one_rank_loss_and_does_not_depend_on_the_pack(tiny_bagel):
    recipe = TrainConfig(steps=2, batch_size=2, num_und_tokens=4, num_gen_tokens=4)
    tiny_bagel.model.freeze()
    bank = new_bank(tiny_bagel, 2)
    held = heldout_examples([pool("t/a", 0), pool("t/b", 1)], 5, seed=0)  # 5 each: chunks of 2, 2, 1

    def losses(world, examples):
        engine = AveragingEngine(PackModule(tiny_bagel, bank), world)
        builder = SampleBuilder(tiny_bagel, bank, recipe.vit_size, recipe.vae_size)
        shares = [PackTrainer(engine, builder, recipe, rank, world).heldout_losses(examples, 2) for rank in range(world)]
        return torch.tensor(shares).sum(0)  # without a `reduce` each rank holds its share

    one = losses(1, held)
    assert torch.isfinite(one).all() and (one > 0).all()
    for world in (2, 3):
        torch.testing.assert_close(losses(world, held), one, atol=1e-6, rtol=1e-6)
    only_b = losses(1, [ex for ex in held if ex.slot == 1])
    assert math.isnan(float(only_b[0])) and float(only_b[1]) == pytest.approx(float(one[1]), rel=1e-6)


def test_a_stopped_concept_leaves_the_steps_keeps_its_best_tokens_and_the_other_goes_on(tiny_bagel):
    """Concept a has held-out examples and a huge min_delta: its first check (step 2) is its best,
    the next two are not, so it stops at step 6 and keeps its step-2 tokens. Concept b has none:
    it trains all 10 steps, to the tokens it gets without early stopping (the packing test's
    tolerance: a smaller batch sums in another order)."""
    cfg = TrainConfig(steps=10, batch_size=2, lr=5e-2, num_und_tokens=4, num_gen_tokens=4)
    pools = [pool("t/a", 0), pool("t/b", 1)]
    start = new_bank(tiny_bagel, 2).state_dict()

    def bank_from_start():
        bank = new_bank(tiny_bagel, 2)
        bank.load_state_dict(start)
        return bank

    plain = bank_from_start()
    train_pack(tiny_bagel, plain, pools, cfg)
    two_steps = bank_from_start()
    train_pack(tiny_bagel, two_steps, pools, cfg.model_copy(update={"steps": 2}))

    stopped = bank_from_start()
    stopper = EarlyStopper(StopRule(check_every=2, patience=2, min_delta=1e6), 2, cfg.steps)
    records = train_pack(tiny_bagel, stopped, pools, cfg, stopper=stopper, heldout=[pool("t/a-held", 5), None])
    a, b = stopper.concepts
    assert (a.stopped_at, a.best_step, len(a.checks)) == (6, 2, 3) and b.stopped_at is None and b.checks == []
    assert a.summary(cfg.steps)["steps_saved"] == 4
    assert [r.samples for r in records] == [[2, 2]] * 6 + [[0, 2]] * 4
    assert all(math.isnan(r.task_losses["ce"][0]) for r in records[6:])
    for name, value in stopped.concept_tensors(0).items():
        torch.testing.assert_close(value, two_steps.concept_tensors(0)[name], atol=0, rtol=0, msg=name)
        assert not torch.equal(value, plain.concept_tensors(0)[name]), name
    for name, value in stopped.concept_tensors(1).items():
        torch.testing.assert_close(value, plain.concept_tensors(1)[name], atol=2e-5, rtol=1e-4, msg=name)


def test_the_pack_ends_when_every_concept_has_stopped(tiny_bagel):
    cfg = TrainConfig(steps=20, batch_size=2, lr=5e-2, num_und_tokens=4, num_gen_tokens=4)
    stopper = EarlyStopper(StopRule(check_every=1, patience=1, min_delta=1e6), 2, cfg.steps)
    records = train_pack(tiny_bagel, new_bank(tiny_bagel, 2), [pool("t/a", 0), pool("t/b", 1)], cfg,
                         stopper=stopper, heldout=[pool("t/a-held", 5), pool("t/b-held", 6)])
    assert len(records) == 2 and stopper.all_stopped
    assert [c.summary(cfg.steps)["steps_saved"] for c in stopper.concepts] == [18, 18]


def test_held_out_pools_must_match_the_pack(tiny_bagel):
    cfg = TrainConfig(steps=2, batch_size=2, num_und_tokens=4, num_gen_tokens=4)
    with pytest.raises(ValueError, match="one held-out pool"):
        train_pack(tiny_bagel, new_bank(tiny_bagel, 2), [pool("t/a", 0), pool("t/b", 1)], cfg,
                   stopper=EarlyStopper(StopRule(), 2, 2), heldout=[None])


def test_the_settings_are_part_of_a_trained_concepts_identity_only_when_enabled():
    from omnipersona.concepts.artifact import config_hash
    from pipelines.train.config import TrainStageConfig

    plain = TrainStageConfig()
    assert plain.result_hash() == config_hash(plain.recipe)
    assert TrainStageConfig(early_stopping={"patience": 9}).result_hash() == plain.result_hash()  # off: no change
    on = TrainStageConfig(early_stopping={"enabled": True})
    assert on.result_hash() != plain.result_hash()
    assert TrainStageConfig(early_stopping={"enabled": True, "patience": 9}).result_hash() != on.result_hash()
    # Warm start alone keeps the hash it had before early stopping existed.
    warm = TrainStageConfig(warm_start=True)
    assert warm.result_hash() == config_hash({"recipe": warm.recipe.model_dump(mode="json"), "warm_start": True})
    assert TrainStageConfig(warm_start=True, early_stopping={"enabled": True}).result_hash() not in (
        warm.result_hash(), on.result_hash())


def test_concept_example_seed_field_is_kept():  # heldout_examples sets the seed; ConceptExample must carry it
    assert ConceptExample(0, "t2i", "x", seed=7).seed == 7
