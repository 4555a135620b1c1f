"""Issue 19: one-call packed attention and expert-ordered routing equal their references (CPU, fp32).

References: `attention_impl="loop"` (one SDPA call per sample) and `expert_order=False` (rows
gathered and scattered around every module). The packs are the training recipe's own (the
`SampleBuilder` of `omnipersona.training`): recognition and VQA (ViT image + text), text QA,
text-to-image (a noised VAE latent) and edit (clean source latent + ViT image + noised target),
of different lengths, three concepts in one bank.
"""
from __future__ import annotations

import pytest
import torch

from omnipersona.concepts.bank import ConceptBank
from omnipersona.model.llm import AttentionSpec, resolve_attention_impl
from omnipersona.model.packing import Text

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture()
def setup(tiny_bagel):
    """(bundle, bank, batch): 3 concepts x 5 examples = every task of the recipe, one pack."""
    from omnipersona.concepts.samples import SampleBuilder
    from omnipersona.pretrain.world_concepts import concept_pool
    from omnipersona.training import step_examples
    from omnipersona.world import make_concepts

    torch.manual_seed(0)
    llm = tiny_bagel.config.llm
    bank = ConceptBank(3, llm.hidden_size, llm.vocab_size, 4, 4)
    with torch.no_grad():
        std = float(tiny_bagel.model.language_model.model.embed_tokens.weight.std())
        for p in bank.parameters():
            p.normal_(0, std)
    pools = [concept_pool(c, 0, size=32, views=2, negatives=1, edits=1) for c in make_concepts(3, seed=9)]
    builder = SampleBuilder(tiny_bagel, bank, 32, 32)
    examples = step_examples(pools, 0, 5, 0)
    batch = builder.batch(examples)
    p = batch.packed
    assert {"recognition", "vqa", "text_qa", "t2i", "edit"} <= set(batch.sample_tasks)
    assert len(set(p.sample_lens)) > 3 and "noise" in sum(p.attn_modes, []) and p.packed_vit_tokens is not None
    return tiny_bagel, bank, batch


def configure(bundle, impl: str, expert_order: bool):
    m = bundle.model.language_model.model
    m.attention_impl, m.expert_order = impl, expert_order


def train_step(bundle, bank, batch, impl, expert_order):
    """(loss, {bank parameter: grad}) of one training forward + backward."""
    from omnipersona.training import TrainConfig, compute_loss

    configure(bundle, impl, expert_order)
    bundle.model.freeze()
    bank.zero_grad(set_to_none=True)
    loss, _ = compute_loss(bundle, bank, batch, TrainConfig().loss_weights)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in bank.named_parameters()}
    assert all(g.abs().sum() > 0 for g in grads.values())
    return loss.detach(), grads


def infer(bundle, bank, batch, impl, expert_order):
    """(ce logits, flow-matching velocities of the noised latents) of one packed forward, no grad."""
    configure(bundle, impl, expert_order)
    p = batch.packed
    with torch.no_grad():
        table, id_out = bank()
        out = bundle.model(**p.model_inputs(), noise=batch.noise, embeds_override=(p.virtual_indexes, table[p.virtual_rows]),
                           ce_logits_fn=lambda h: bank.logits(h, bundle.model.language_model.lm_head, identifier_output=id_out))
    return out["ce_logits"], out["mse_preds"]


@pytest.mark.parametrize("impl", ["padded", "padded-aligned"])
def test_one_call_training_equals_per_sample(setup, impl, monkeypatch):
    """Loss and the bank's gradients of the one-call attention equal the per-sample loop's (1e-5).

    "flex" is not here: torch has no flex_attention backward on CPU (it raises); its training
    semantics are its mask, checked pair by pair in `test_flex_block_mask_is_the_samples_masks`.
    "padded-aligned": rows rounded up to a multiple of 16 as on a GPU (`PADDED_ROW_ALIGN`).
    Break-checked: padding and the other samples sharing a row made visible (`_padded_layout`
    filling each row's mask with True outside the samples' blocks) fails it."""
    import omnipersona.model.llm as llm

    if impl == "padded-aligned":
        monkeypatch.setattr(llm, "PADDED_ROW_ALIGN", {"cpu": 16})
        impl = "padded"
    bundle, bank, batch = setup
    assert max(batch.packed.sample_lens) % 16  # so the aligned rows really are longer
    ref_loss, ref_grads = train_step(bundle, bank, batch, "loop", False)
    loss, grads = train_step(bundle, bank, batch, impl, False)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL)


@pytest.mark.parametrize("impl", ["padded", "flex"])
def test_one_call_inference_equals_per_sample(setup, impl):
    """Logits and velocities of the one-call attention equal the per-sample loop's (1e-5).

    Break-checked: the training test's padded-mask break fails "padded"; the flex mask_mod without
    its same-sample condition fails "flex"."""
    bundle, bank, batch = setup
    ref_logits, ref_vel = infer(bundle, bank, batch, "loop", False)
    logits, vel = infer(bundle, bank, batch, impl, False)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    torch.testing.assert_close(vel, ref_vel, **TOL)


@pytest.mark.parametrize("impl", ["padded", "flex", "loop"])
def test_expert_ordered_routing_equals_gather_scatter(setup, impl):
    """Sorting the pack by expert once equals routing by gather/scatter around every module (1e-5):
    training loss, bank gradients, logits and velocities, with every attention impl (no training
    for "flex": torch has no flex_attention backward on CPU).

    Break-checked: rope tables not permuted with the rows (`Qwen2MoTModel.forward`), and the two
    experts swapped in `_route`'s expert-order branch, each fail it."""
    bundle, bank, batch = setup
    if impl != "flex":
        ref_loss, ref_grads = train_step(bundle, bank, batch, "loop", False)
        loss, grads = train_step(bundle, bank, batch, impl, True)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], **TOL)
    ref_logits, ref_vel = infer(bundle, bank, batch, "loop", False)
    logits, vel = infer(bundle, bank, batch, impl, True)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    torch.testing.assert_close(vel, ref_vel, **TOL)


def test_flex_block_mask_is_the_samples_masks(setup):
    """The flex block mask allows exactly the pairs of the block-diagonal of the samples' own masks
    (causal text, full images, hidden noised latents), and skips blocks: fewer KV blocks are
    visited than a dense pack would.

    Break-checked: the mask_mod without its same-sample condition fails it."""
    from omnipersona.model.llm import sample_attention_mask

    _, _, batch = setup
    p = batch.packed
    masks = [sample_attention_mask(s, m) for s, m in zip(p.split_lens, p.attn_modes)]
    spec = AttentionSpec(sample_lens=list(p.sample_lens), masks=masks, impl="flex")
    block = spec.layout("flex", None, torch.device("cpu"))["block_mask"]
    n = p.sequence_length
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = block.mask_mod(torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long), q, k)
    assert torch.equal(allowed, torch.block_diag(*masks))
    blocks = -(-n // block.BLOCK_SIZE[1])
    assert n > 2 * block.BLOCK_SIZE[1] and int(block.kv_num_blocks.sum()) < blocks * blocks


def test_expert_order_in_cached_inference(tiny_bagel):
    """The KV-cached path (text prefill with generation-routed tokens, a clean latent, then the
    velocity of two rows' noised latents) gives the same hidden states and velocities with the
    expert order on and off (1e-5).

    Break-checked: `MoTAttention.forward` not putting q/k/v back in pack order before the cached
    attention fails it."""
    model, special = tiny_bagel.model, tiny_bagel.special
    markers = (special.start_of_image, special.end_of_image)
    g = torch.Generator().manual_seed(3)
    z, p = tiny_bagel.config.vae.z_channels, tiny_bagel.config.latent_patch_size
    ids = torch.randint(10, 200, (7 + 5,), generator=g)
    latents = [torch.randn(z, 4, 6, generator=g), torch.randn(z, 4, 4, generator=g)]
    hws = [(4 // p, 6 // p), (4 // p, 4 // p)]
    xs = [torch.randn(h * w, tiny_bagel.config.patch_latent_dim, generator=g) for h, w in hws]
    results = []
    for order in (False, True):
        configure(tiny_bagel, "padded", order)
        caches = [model.new_cache(), model.new_cache()]
        hidden, pos = model.prefill_text_batch(caches, [0, 0], ids, [7, 5], gen_indexes=torch.tensor([2, 3, 9]))
        pos = model.prefill_vae_latent_batch(caches, pos, latents, markers)
        with torch.no_grad():
            vel = model.predict_velocity_batch(caches, pos, xs, 0.6, hws, markers)
        results.append((torch.cat(hidden), torch.cat(vel)))
    torch.testing.assert_close(results[1][0], results[0][0], **TOL)
    torch.testing.assert_close(results[1][1], results[0][1], **TOL)


def test_expert_order_calls_both_experts_even_without_generation_tokens(tiny_bagel):
    """A text-only pack still calls every generation-expert module (on zero rows): ZeRO-3 ranks must
    make the same module calls whatever tokens their share holds.

    Break-checked: skipping an expert whose slice is empty in `_route`'s expert-order branch fails it."""
    configure(tiny_bagel, "padded", True)
    layer = tiny_bagel.model.language_model.model.layers[0]
    calls = []
    for module in (layer.input_layernorm_moe_gen, layer.self_attn.q_proj_moe_gen, layer.self_attn.o_proj_moe_gen, layer.mlp_moe_gen):
        module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = tiny_bagel.pack([[Text([11, 12, 13], loss=True)], [Text([14, 15])]])
    with torch.no_grad():
        tiny_bagel.model(**batch.model_inputs())
    assert calls == [0, 0, 0, 0]


def test_padded_layout_is_built_once_per_forward(setup, monkeypatch):
    """The one-call path builds its indices and padded masks once per forward, not once per layer.

    Break-checked: `AttentionSpec.layout` without its cache fails it (one build per layer)."""
    import omnipersona.model.llm as llm

    bundle, bank, batch = setup
    built = []
    original = llm._padded_layout
    monkeypatch.setattr(llm, "_padded_layout", lambda *a: built.append(1) or original(*a))
    infer(bundle, bank, batch, "padded", True)
    assert bundle.config.llm.num_hidden_layers > 1 and len(built) == 1


def test_unknown_impl_is_refused(tiny_bagel):
    batch = tiny_bagel.pack([[Text([11, 12, 13], loss=True)]])
    tiny_bagel.model.language_model.model.attention_impl = "fast"
    with pytest.raises(ValueError, match="unknown attention impl"):
        tiny_bagel.model(**batch.model_inputs())
    assert resolve_attention_impl("auto", torch.device("cpu")) == "loop"
    assert resolve_attention_impl(None, torch.device("cuda")) == "padded"
    assert resolve_attention_impl("flex", torch.device("cpu")) == "flex"
