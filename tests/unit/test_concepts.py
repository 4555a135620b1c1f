"""OmniPersona core on the tiny model: pack equivalence, concept-token routing, learning."""
import numpy as np
import pytest
import torch

from omnipersona.concepts.bank import ConceptBank
from omnipersona.concepts.init import init_concept
from omnipersona.concepts.prompts import encode, system_prompt_ids
from omnipersona.concepts.samples import ConceptExample, SampleBuilder
from omnipersona.model.sampling import append_text, new_context
from omnipersona.training import ConceptPool, TrainConfig, compute_loss, train_pack


def images(seed, n, size=64):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, 1, 3))
    return [np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def pool(key, seed):
    imgs = images(seed, 3)
    other = images(seed + 1000, 2)
    examples = [
        ConceptExample(0, "recognition", "Is <sks> in this image?", "Yes", image=imgs[0]),
        ConceptExample(0, "recognition", "Is <sks> in this image?", "No", image=other[0]),
        ConceptExample(0, "text_qa", "What is the toy of <sks>?", "The toy of <sks> is a black excavator."),
        ConceptExample(0, "t2i", "A photo of <sks>.", target=imgs[1]),
        ConceptExample(0, "edit", "remove <sks> from the image.", image=imgs[2], target=other[1]),
    ]
    return ConceptPool(key, examples)


def new_bank(bundle, n, mode="decoupled", nu=4, ng=4):
    cfg = bundle.config.llm
    bank = ConceptBank(n, cfg.hidden_size, cfg.vocab_size, nu, ng, mode=mode)
    for slot in range(n):
        init_concept(bank, slot, bundle, "dog", images(slot, 2), seed=slot)
    return bank


def test_pack_of_8_equals_each_concept_alone(tiny_bagel):
    cfg = TrainConfig(steps=3, batch_size=2, lr=5e-2, num_und_tokens=4, num_gen_tokens=4)
    pools = [pool(f"t/c{i}", i) for i in range(8)]
    packed = new_bank(tiny_bagel, 8)
    init_state = {k: v.clone() for k, v in packed.state_dict().items()}
    train_pack(tiny_bagel, packed, pools, cfg)
    for i in range(8):
        alone = new_bank(tiny_bagel, 1)
        with torch.no_grad():
            for name, value in init_state.items():
                getattr(alone, name)[0] = value[i]
        train_pack(tiny_bagel, alone, [pools[i]], cfg)
        for name in ("identifier", "und_tokens", "gen_tokens", "identifier_output"):
            trained = getattr(packed, name)[i]
            assert not torch.allclose(trained, init_state[name][i]), f"{name} of concept {i} did not train"
            torch.testing.assert_close(getattr(alone, name)[0], trained, atol=2e-5, rtol=1e-4)


def _capture_gen_masks(model):
    seen = []
    handle = model.language_model.register_forward_hook(lambda m, args, out: seen.append(args[2].clone()))
    return seen, handle


def test_concept_tokens_routed_to_their_experts_in_training_and_prefill(tiny_bagel):
    bank = new_bank(tiny_bagel, 2)
    builder = SampleBuilder(tiny_bagel, bank)
    batch = builder.batch([ConceptExample(1, "text_qa", "What is the toy of <sks>?", "a kite")])
    p = batch.packed
    seen, handle = _capture_gen_masks(tiny_bagel.model)
    with torch.no_grad():
        compute_loss(tiny_bagel, bank, batch, TrainConfig().loss_weights)
        ctx = new_context(tiny_bagel.model)
        sys_ids = system_prompt_ids(tiny_bagel.tokenizer, bank, 1)
        append_text(tiny_bagel.model, ctx, sys_ids, tiny_bagel.special, bank.table(), bank.virtual_gen_start)
    handle.remove()
    train_mask, prefill_mask = seen
    rows = dict(zip(p.virtual_indexes.tolist(), p.virtual_rows.tolist()))
    vocab = bank.vocab_size
    gen_rows = {i - vocab for i in bank.gen_ids(1)}
    und_rows = {i - vocab for i in bank.und_ids(1)} | {bank.identifier_id(1) - vocab}
    assert {r for pos, r in rows.items() if train_mask[pos]} == gen_rows
    assert {r for pos, r in rows.items() if not train_mask[pos]} == und_rows
    # Prefill: <bos> + system prompt + <eos>; gen tokens exactly at their positions.
    expected = torch.tensor([False] + [t in bank.gen_ids(1) for t in sys_ids] + [False])
    assert torch.equal(prefill_mask, expected)
    # Perturbing the generation expert changes gen-token outputs only (same layer input).
    from omnipersona.model.llm import _route

    layer = tiny_bagel.model.language_model.model.layers[0]
    x = torch.randn(len(expected), bank.hidden_size)
    f = lambda: _route(x, expected, lambda t: layer.mlp(t), lambda t: layer.mlp_moe_gen(t))
    with torch.no_grad():
        before = f()
        layer.mlp_moe_gen.up_proj.weight.mul_(2.0)
        after = f()
    assert torch.equal(before[~expected], after[~expected]) and not torch.allclose(before[expected], after[expected])


def test_shared_mode_has_no_generation_tokens_and_trains(tiny_bagel):
    bank = new_bank(tiny_bagel, 1, mode="shared")
    assert bank.num_gen == 0 and bank.num_und == 8 and bank.virtual_gen_start is None
    before = bank.und_tokens.detach().clone()
    train_pack(tiny_bagel, bank, [pool("t/s", 3)], TrainConfig(steps=2, batch_size=2, mode="shared"))
    assert not torch.allclose(before, bank.und_tokens)


def test_placeholders_map_to_own_identifiers(tiny_bagel):
    bank = new_bank(tiny_bagel, 3)
    tok = tiny_bagel.tokenizer
    ids = encode(tok, "Is <maeve> with <rex>?", {"maeve": bank.identifier_id(0), "rex": bank.identifier_id(2)})
    assert bank.identifier_id(0) in ids and bank.identifier_id(2) in ids and bank.identifier_id(1) not in ids
    assert len(set(bank.und_ids(0)) & set(bank.und_ids(1))) == 0


def test_concept_losses_split_latent_rows_by_task_like_a_per_row_loop(tiny_bagel):
    from omnipersona.objectives import LossWeights, concept_losses

    bank = new_bank(tiny_bagel, 3)
    builder = SampleBuilder(tiny_bagel, bank)
    examples = [ex for i in range(3) for ex in pool(f"t/c{i}", i).examples]
    examples = [ConceptExample(slot, ex.task, ex.prompt, ex.answer, ex.image, ex.target, seed=7 + slot)
                for slot in range(3) for ex in examples[slot * 5 : slot * 5 + 5]]
    batch = builder.batch(examples[:-1])  # concept 2 has no edit sample: its edit loss is NaN
    rows = batch.packed.mse_sample_ids
    g = torch.Generator().manual_seed(0)
    out = {"mse": torch.rand(len(rows), 16, generator=g), "ce": None}
    weights = LossWeights(0.5, 2.0)
    total, table = concept_losses(out, batch, 3, weights)
    # Reference: the task of every latent row looked up one row at a time.
    per_row = out["mse"].mean(-1)
    expected_total = 0.0
    for task, lam in (("t2i", 0.5), ("edit", 2.0)):
        means = []
        for slot in range(3):
            vals = [per_row[i] for i, s in enumerate(rows.tolist())
                    if batch.sample_tasks[s] == task and int(batch.sample_slots[s]) == slot]
            means.append(torch.stack(vals).mean() if vals else torch.tensor(float("nan")))
        means = torch.stack(means)
        torch.testing.assert_close(table[task], means, equal_nan=True)
        expected_total = expected_total + lam * means.nan_to_num(0.0).sum()
    assert torch.isnan(table["edit"][2]) and not torch.isnan(table["t2i"]).any()
    torch.testing.assert_close(total, expected_total)


def _reference_latent(bundle, image, size, g):
    """`SampleBuilder._encode_latent` before the cache: the VAE encoder on every call."""
    from omnipersona.model.images import to_tensor

    vae = bundle.vae
    param = next(vae.parameters())
    x = to_tensor(image, (size, size))[None].to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        dist = vae.ae.encode(x).latent_dist
    eps = torch.randn(dist.mean.shape, generator=g).to(dist.mean)
    z = dist.mean + dist.std * eps
    return (vae.config.scale_factor * (z - vae.config.shift_factor))[0], dist


def _count_encoder_runs(bundle):
    calls = []
    handle = bundle.vae.ae.encoder.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_cached_vae_posterior_gives_bit_identical_latents(tiny_bagel):
    bank = new_bank(tiny_bagel, 2)
    img = images(11, 1)[0]
    builder = SampleBuilder(tiny_bagel, bank, vae_size=32)
    calls, handle = _count_encoder_runs(tiny_bagel)
    for seed in (0, 1, 12345):
        before, dist = _reference_latent(tiny_bagel, img, 32, torch.Generator().manual_seed(seed))
        after = builder._encode_latent(img, torch.Generator().manual_seed(seed))
        assert torch.equal(before, after)
        # ... and both are the sample diffusers' DiagonalGaussianDistribution draws with that generator.
        z = dist.sample(generator=torch.Generator().manual_seed(seed))
        vae = tiny_bagel.vae
        assert torch.equal(after, (vae.config.scale_factor * (z - vae.config.shift_factor))[0])
    handle.remove()
    assert len(calls) == 3 + 1  # the references' 3 encodes + the builder's single one
    assert builder.cache.misses == 1


def test_precompute_then_batches_run_no_encoder_and_match_uncached(tiny_bagel):
    from omnipersona.training import pack_step_examples

    bank = new_bank(tiny_bagel, 3)
    pools = [pool(f"t/c{i}", i) for i in range(3)]
    for slot, p in enumerate(pools):
        for ex in p.examples:
            ex.slot = slot
    steps = [list(pack_step_examples(pools, s, s + 1, 5, 0)) for s in range(3)]
    fresh = SampleBuilder(tiny_bagel, bank)
    cached = SampleBuilder(tiny_bagel, bank)
    encoded = cached.precompute(ex for step in steps for ex in step)
    assert encoded == 3 * 3  # each concept: one t2i target + an edit's source and target
    calls, handle = _count_encoder_runs(tiny_bagel)
    batches = [cached.batch(step) for step in steps]
    handle.remove()
    assert calls == []  # the steps never ran the VAE encoder
    for step, got in zip(steps, batches):
        want = fresh.batch(step)
        assert torch.equal(want.noise, got.noise)
        for name, value in want.packed.__dict__.items():
            other = getattr(got.packed, name)
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, name
    # A new pack's precompute drops the previous pack's images.
    new_pack = [ConceptExample(0, "t2i", "A photo of <sks>.", target=images(99, 1)[0])]
    assert cached.precompute(new_pack) == 1 and len(cached.cache) == 1


def test_init_concept_with_cache_equals_without_and_reuses_posteriors(tiny_bagel):
    cfg = tiny_bagel.config.llm
    imgs = images(5, 3)
    plain = ConceptBank(1, cfg.hidden_size, cfg.vocab_size, 4, 4)
    init_concept(plain, 0, tiny_bagel, "dog", imgs, seed=3)
    cached = ConceptBank(1, cfg.hidden_size, cfg.vocab_size, 4, 4)
    builder = SampleBuilder(tiny_bagel, cached)  # vae_size 64, init's size: same posteriors
    builder.precompute([ConceptExample(0, "t2i", "A photo of <sks>.", target=img) for img in imgs])
    calls, handle = _count_encoder_runs(tiny_bagel)
    init_concept(cached, 0, tiny_bagel, "dog", imgs, seed=3, cache=builder.cache)
    init_concept(cached, 0, tiny_bagel, "dog", imgs, seed=3, cache=builder.cache)  # ViT features reused too
    handle.remove()
    assert calls == [] and builder.cache.misses == 3 + 3  # 3 posteriors (precompute) + 3 ViT features
    for name, value in plain.state_dict().items():
        assert torch.equal(value, cached.state_dict()[name]), name


@pytest.mark.parametrize("rank,start", [(0, 0), (1, 2)])
def test_pack_trainer_start_pack_covers_this_ranks_steps(tiny_bagel, rank, start):
    from omnipersona.training import PackModule, PackTrainer, TorchEngine, make_optimizer

    recipe = TrainConfig(steps=4, batch_size=3, num_und_tokens=4, num_gen_tokens=4)
    bank = new_bank(tiny_bagel, 2)
    pools = [pool(f"t/c{i}", i) for i in range(2)]
    engine = TorchEngine(PackModule(tiny_bagel, bank), *make_optimizer(bank, recipe))
    trainer = PackTrainer(engine, SampleBuilder(tiny_bagel, bank, recipe.vit_size, recipe.vae_size), recipe, rank=rank, world=2)
    assert trainer.start_pack(pools, start) > 0
    calls, handle = _count_encoder_runs(tiny_bagel)
    for step in [0, *range(start, recipe.steps)]:
        trainer.batch(trainer.examples(pools, step))
    handle.remove()
    assert calls == []


def test_step_batches_go_to_the_engines_device(tiny_bagel):
    """A GPU worker's batches must be on its device: checked with `meta` (no GPU needed)."""
    from types import SimpleNamespace

    from omnipersona.training import PackModule, PackTrainer, TorchEngine, make_optimizer

    recipe = TrainConfig(steps=1, batch_size=5, num_und_tokens=4, num_gen_tokens=4)
    bank = new_bank(tiny_bagel, 2)
    pools = [pool(f"t/c{i}", i) for i in range(2)]
    assert TorchEngine(PackModule(tiny_bagel, bank), *make_optimizer(bank, recipe)).device == torch.device("cpu")  # the bank's
    trainer = PackTrainer(SimpleNamespace(device=torch.device("meta")), SampleBuilder(tiny_bagel, bank), recipe)
    examples = trainer.examples(pools, 0)
    batch = trainer.batch(examples)
    cpu = trainer.builder.batch(examples)
    tensors = {k: v for k, v in vars(batch.packed).items() if torch.is_tensor(v)}
    assert "padded_latent" in tensors and "packed_vit_tokens" in tensors and "mse_sample_ids" in tensors
    assert all(v.device.type == "meta" for v in [*tensors.values(), batch.noise, batch.sample_slots])
    assert all(getattr(cpu.packed, k).dtype == v.dtype and getattr(cpu.packed, k).shape == v.shape for k, v in tensors.items())
    assert cpu.packed.padded_latent.device.type == "cpu"  # `to` returns a new batch
