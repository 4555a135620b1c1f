"""The one pack trainer in plain PyTorch: the recipe's LR schedule, per-pack resets, resume, loading,
and data parallel ranks that together make exactly the one-rank step."""
import pytest
import torch

from omnipersona.concepts.samples import ConceptExample, SampleBuilder
from omnipersona.model.checkpoint import load_bagel
from omnipersona.training import (
    ConceptPool,
    PackModule,
    PackTrainer,
    TorchEngine,
    TrainConfig,
    make_optimizer,
    step_examples,
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


# ----------------------------------------------------------------------------- data parallel: W ranks = one rank


def test_step_target_counts_equal_the_packed_batches_targets(tiny_bagel):
    """The counts every rank computes without building the step's batch are the batch's own: answer
    tokens per concept, latent rows per concept and flow task (at two VAE sizes)."""
    from omnipersona.training import step_target_counts

    pools = [with_vqa(pool("t/a", 0)), pool("t/b", 1), pool("t/c", 2)]
    for vae_size in (64, 32):
        bank = new_bank(tiny_bagel, 4)  # one slot more than concepts: the last pack of a job
        builder = SampleBuilder(tiny_bagel, bank, vae_size=vae_size)
        for step in range(3):
            examples = step_examples(pools, step, 5, 0)
            counts = step_target_counts(builder, examples, 4)
            batch = builder.batch(examples)
            p = batch.packed
            expected = {"ce": torch.bincount(batch.sample_slots[p.ce_sample_ids], minlength=4).float()}
            row_samples = p.mse_sample_ids.tolist()
            for task in ("t2i", "edit"):
                slots = [int(batch.sample_slots[s]) for s in row_samples if batch.sample_tasks[s] == task]
                if slots:
                    expected[task] = torch.bincount(torch.tensor(slots), minlength=4).float()
            assert set(counts) == set(expected), (step, set(counts), set(expected))
            for term, value in expected.items():
                torch.testing.assert_close(counts[term], value, atol=0, rtol=0, msg=f"{vae_size} {step} {term}")


class AveragingEngine:
    """W data-parallel ranks in one process, with DeepSpeed's contract: each rank's backward adds its
    gradient divided by W (DeepSpeed averages over the ranks); `step` leaves the gradients to read."""

    device = torch.device("cpu")

    def __init__(self, module: PackModule, world: int):
        self.module, self.world = module, world

    def __call__(self, batch, weights, counts=None):
        return self.module(batch, weights, counts)

    def backward(self, loss):
        (loss / self.world).backward()

    def step(self):
        pass


def with_vqa(p: ConceptPool) -> ConceptPool:
    """A fifth task, so that tasks interleave differently with 2 ranks' example shares."""
    image = p.by_task["recognition"][0].image
    return ConceptPool(p.concept_key, p.examples + [ConceptExample(0, "vqa", "What is <sks> doing?", "It sits still.", image=image)])


def one_step(bundle, bank, pools, recipe, world):
    """Step 1 of the pack run by `world` ranks: the combined gradient and each rank's step record."""
    bank.zero_grad(set_to_none=True)
    engine = AveragingEngine(PackModule(bundle, bank), world)
    builder = SampleBuilder(bundle, bank, recipe.vit_size, recipe.vae_size)
    records = [PackTrainer(engine, builder, recipe, rank, world).train(pools, 1, 2)[0] for rank in range(world)]
    return [p.grad.clone() for p in bank.parameters()], records


@pytest.mark.parametrize("world", [2, 3, 4])
def test_w_ranks_make_the_one_rank_gradient_loss_and_per_concept_losses(tiny_bagel, world):
    """Each rank divides by the step's counts over all ranks and scales its loss by W against the
    engine's average: the ranks together make the one-rank step exactly (4 ranks for a batch of 3:
    one rank has no example and runs one with weight 0)."""
    recipe = TrainConfig(steps=2, batch_size=3, num_und_tokens=4, num_gen_tokens=4)
    bank = new_bank(tiny_bagel, 2)
    pools = [with_vqa(pool("t/a", 0)), with_vqa(pool("t/b", 1))]
    # Step 1 draws text_qa, vqa, edit per concept: 2 ranks split its answer tokens 1 + 1 examples.
    assert [ex.task for ex in step_examples(pools, 1, 3, recipe.seed)[:3]] == ["text_qa", "vqa", "edit"]
    tiny_bagel.model.freeze()
    grads, (whole,) = one_step(tiny_bagel, bank, pools, recipe, 1)
    ranks_grads, records = one_step(tiny_bagel, bank, pools, recipe, world)
    for g, ranks_g in zip(grads, ranks_grads, strict=True):
        assert float(g.abs().max()) > 0
        torch.testing.assert_close(ranks_g, g, atol=1e-7, rtol=1e-5)
    # Without a `reduce`, each rank's record holds its share: the shares add up to the whole step.
    assert sum(r.loss for r in records) == pytest.approx(whole.loss, rel=1e-6)
    assert all(r.samples == [3, 3] for r in records)
    for term, values in whole.task_losses.items():
        summed = torch.stack([torch.tensor(r.task_losses[term]) for r in records]).sum(0)
        torch.testing.assert_close(summed, torch.tensor(values), atol=1e-6, rtol=1e-6, equal_nan=True)
    if world > recipe.batch_size:
        assert records[-1].loss == 0.0
