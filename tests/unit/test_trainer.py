"""The one pack trainer in plain PyTorch: the recipe's LR schedule, per-pack resets, resume, loading."""
import pytest
import torch

from omnipersona.concepts.samples import SampleBuilder
from omnipersona.model.checkpoint import load_bagel
from omnipersona.training import (
    PackModule,
    PackTrainer,
    TorchEngine,
    TrainConfig,
    make_optimizer,
    train_pack,
)
from tests.unit.test_concepts import new_bank, pool

RECIPE = TrainConfig(steps=4, batch_size=2, lr=5e-2, warmup_steps=3, num_und_tokens=4, num_gen_tokens=4)


def trainer_for(bundle, bank, recipe=RECIPE) -> PackTrainer:
    bundle.model.freeze()
    engine = TorchEngine(PackModule(bundle, bank), *make_optimizer(bank, recipe))
    return PackTrainer(engine, SampleBuilder(bundle, bank, recipe.vit_size, recipe.vae_size), recipe)


def test_every_step_runs_at_the_warmup_schedules_lr(tiny_bagel):
    trainer = trainer_for(tiny_bagel, new_bank(tiny_bagel, 1))
    pools = [pool("t/a", 0)]
    seen = []
    trainer.engine.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    trainer.start_pack(pools)
    trainer.train(pools, 0, RECIPE.steps)
    assert seen == pytest.approx([RECIPE.lr / 3, RECIPE.lr * 2 / 3, RECIPE.lr, RECIPE.lr])


def test_a_second_pack_in_the_same_engine_trains_as_in_a_fresh_one(tiny_bagel):
    """Per-pack reset: zeroed AdamW state and the warmup from step 0 again."""
    bank = new_bank(tiny_bagel, 2)
    start = {k: v.clone() for k, v in bank.state_dict().items()}
    pools = [pool("t/a", 0), pool("t/b", 1)]
    trainer = trainer_for(tiny_bagel, bank)
    trainer.start_pack(pools)
    trainer.train(pools, 0, RECIPE.steps)
    first = {k: v.clone() for k, v in bank.state_dict().items()}
    bank.load_state_dict(start)  # the concepts' fresh values, as the Ray worker's reset writes them
    trainer.start_pack(pools)
    trainer.train(pools, 0, RECIPE.steps)
    for name, value in first.items():
        assert not torch.equal(value, start[name]), name
        torch.testing.assert_close(bank.state_dict()[name], value, atol=0, rtol=0)


def test_a_resumed_pack_continues_the_schedule_and_matches_an_uninterrupted_one(tiny_bagel):
    pools = [pool("t/a", 0)]
    whole = new_bank(tiny_bagel, 1)
    start = {k: v.clone() for k, v in whole.state_dict().items()}
    records = train_pack(tiny_bagel, whole, pools, RECIPE)
    assert [r.step for r in records] == [0, 1, 2, 3] and all(r.samples == [2] for r in records)

    halves = new_bank(tiny_bagel, 1)
    halves.load_state_dict(start)
    before = trainer_for(tiny_bagel, halves)
    before.start_pack(pools)
    before.train(pools, 0, 2)
    saved = before.engine.optimizer.state_dict()
    # A new worker: fresh engine (schedule at 0), optimizer state from the checkpoint, then start_pack at 2.
    after = trainer_for(tiny_bagel, halves)
    after.engine.optimizer.load_state_dict(saved)
    after.start_pack(pools, 2)
    after.train(pools, 2, RECIPE.steps)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(halves.state_dict()[name], value, atol=1e-6, rtol=1e-5)


def test_load_bagel_under_an_init_context_fills_every_parameter_through_fill_param(tiny_bagel_dir):
    plain = load_bagel(str(tiny_bagel_dir))
    filled = []

    def fill(param, value):
        filled.append(param)
        param.data.copy_(value)

    built = load_bagel(str(tiny_bagel_dir), init_context=torch.device("cpu"), fill_param=fill)
    assert len(filled) == len(list(built.model.parameters()))
    assert built.fingerprint == plain.fingerprint
    for name, value in plain.model.state_dict().items():
        assert torch.equal(built.model.state_dict()[name], value), name
