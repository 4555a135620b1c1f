"""The BAGEL architecture: layout round trip, expert routing, packing, KV cache, sampling, FLOPs."""
import subprocess
import sys

import pytest
import torch

from omnipersona.model.checkpoint import CheckpointError, load_bagel, save_bagel
from omnipersona.model.packing import Text, VaeLatent, VitImage
from omnipersona.model.sampling import (
    FlowSampling,
    append_text,
    append_vae_latent,
    append_vit_image,
    decode_text,
    latent_grid,
    new_context,
    sample_latent,
)


def pack_for(bundle, samples, **kw):
    return bundle.pack(samples, **kw)


def ids(bundle, text):
    return bundle.tokenizer.encode(text, add_special_tokens=False)


def mixed_sample(bundle, seed):
    g = torch.Generator().manual_seed(seed)
    z = bundle.config.vae.z_channels
    return [
        VitImage(torch.rand(3, 32, 48, generator=g) * 2 - 1),
        Text(ids(bundle, "Describe the image."), loss=False),
        Text(ids(bundle, "a striped teal star"), loss=True),
        VaeLatent(torch.randn(z, 4, 6, generator=g), loss=True, timestep_logit=0.3),
    ]


def test_round_trip_in_release_layout_gives_identical_outputs(tiny_bagel, tmp_path):
    batch = pack_for(tiny_bagel, [mixed_sample(tiny_bagel, 0)])
    noise = torch.randn(batch.packed_timesteps.shape[0], tiny_bagel.config.patch_latent_dim)
    with torch.no_grad():
        before = tiny_bagel.model(**batch.model_inputs(), noise=noise)
    save_bagel(tmp_path, tiny_bagel.model, tiny_bagel.vae, tiny_bagel.tokenizer)
    names = sorted(p.name for p in tmp_path.iterdir())
    for required in ("llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors", "tokenizer.json"):
        assert required in names
    again = load_bagel(str(tmp_path))
    with torch.no_grad():
        after = again.model(**batch.model_inputs(), noise=noise)
    assert torch.equal(before["ce"], after["ce"]) and torch.equal(before["mse"], after["mse"])
    assert again.fingerprint == tiny_bagel.fingerprint
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tiny_bagel.vae.encode(image, sample=False), again.vae.encode(image, sample=False))


def test_release_key_names_and_strict_loading(tiny_bagel, tmp_path):
    keys = set(tiny_bagel.model.state_dict())
    for key in (
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.self_attn.q_proj_moe_gen.bias",
        "language_model.model.layers.0.self_attn.k_norm_moe_gen.weight",
        "language_model.model.layers.1.mlp_moe_gen.down_proj.weight",
        "language_model.model.layers.1.post_attention_layernorm_moe_gen.weight",
        "language_model.model.norm_moe_gen.weight",
        "language_model.lm_head.weight",
        "vit_model.vision_model.embeddings.patch_embedding.weight",
        "vit_model.vision_model.embeddings.position_embedding.weight",
        "vit_model.vision_model.encoder.layers.0.self_attn.out_proj.weight",
        "vit_model.vision_model.post_layernorm.bias",
        "connector.fc2.weight",
        "vit_pos_embed.pos_embed",
        "time_embedder.mlp.2.weight",
        "vae2llm.weight",
        "llm2vae.bias",
        "latent_pos_embed.pos_embed",
    ):
        assert key in keys
    # vit_config.json counts one layer more than the encoder runs, as in the release.
    assert f"vit_model.vision_model.encoder.layers.{tiny_bagel.config.vit.num_hidden_layers - 1}.layer_norm1.weight" not in keys
    from safetensors.torch import load_file, save_file

    save_bagel(tmp_path, tiny_bagel.model, tiny_bagel.vae, tiny_bagel.tokenizer)
    state = load_file(tmp_path / "ema.safetensors")
    state["language_model.model.layers.9.mlp.up_proj.weight"] = torch.zeros(1)
    del state["connector.fc1.bias"]
    save_file(state, tmp_path / "ema.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_bagel(str(tmp_path))
    assert "connector.fc1.bias" in str(err.value) and "layers.9.mlp.up_proj.weight" in str(err.value)


# Every module a MoT decoder layer holds twice: the understanding expert's name; `<name>_moe_gen` is
# the generation expert's.
EXPERT_MODULES = (
    "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.q_norm",
    "self_attn.k_norm", "self_attn.o_proj", "post_attention_layernorm", "mlp",
)
# Interleaved on purpose: a contiguous split would also pass with slicing bugs.
GEN_ROWS = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1], dtype=torch.bool)


def expert_layer(bundle):
    """Decoder layer 0 with every weight of both experts distinct (the tiny init leaves norms at 1)."""
    layer = bundle.model.language_model.model.layers[0]
    names = {n for n, _ in layer.named_modules() if n.endswith("_moe_gen")}
    assert names == {f"{n}_moe_gen" for n in EXPERT_MODULES}, "a duplicated module is missing from EXPERT_MODULES"
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return layer


def run_layer(bundle, layer, x, gen_mask, attend):
    """`MoTDecoderLayer.forward` on one packed sample with an explicit [L, L] attention mask."""
    from omnipersona.model.llm import AttentionSpec

    cos, sin = bundle.model.language_model.model.rotary_emb(torch.arange(x.shape[0]), x.dtype)
    with torch.no_grad():
        return layer(x, gen_mask, cos, sin, AttentionSpec(sample_lens=[x.shape[0]], masks=[attend]))


def swap_experts(layer):
    with torch.no_grad():
        for name in EXPERT_MODULES:
            und, gen = layer.get_submodule(name), layer.get_submodule(f"{name}_moe_gen")
            for pu, pg in zip(und.parameters(), gen.parameters(), strict=True):
                tmp = pu.detach().clone()
                pu.copy_(pg)
                pg.copy_(tmp)


def test_decoder_layer_with_swapped_experts_routes_by_the_mask(tiny_bagel):
    """Through `MoTDecoderLayer.forward`: once the two experts' weights are swapped, a token computes
    what the other expert gave it before; so its output is a function of its own mask bit only. (A mask
    ignored fails this; one inverted everywhere is symmetric under the swap: the next test pins which
    expert a bit selects.)"""
    layer = expert_layer(tiny_bagel)
    x = torch.randn(len(GEN_ROWS), tiny_bagel.config.llm.hidden_size, generator=torch.Generator().manual_seed(0))
    causal = torch.ones(len(GEN_ROWS), len(GEN_ROWS), dtype=torch.bool).tril()
    all_und, all_gen = torch.zeros_like(GEN_ROWS), torch.ones_like(GEN_ROWS)
    base = run_layer(tiny_bagel, layer, x, GEN_ROWS, causal)
    base_und = run_layer(tiny_bagel, layer, x, all_und, causal)
    base_gen = run_layer(tiny_bagel, layer, x, all_gen, causal)
    assert (base_und - base_gen).abs().amax(-1).min() > 1e-3, "the experts must differ on every row for this test"
    swap_experts(layer)
    swapped = run_layer(tiny_bagel, layer, x, GEN_ROWS, causal)
    # Understanding tokens now compute with the generation expert's weights and vice versa: every row changes.
    assert (swapped - base).abs().amax(-1).min() > 1e-3
    # ... and flipping every token's mask bit gives back exactly the outputs from before the swap.
    torch.testing.assert_close(run_layer(tiny_bagel, layer, x, ~GEN_ROWS, causal), base, atol=1e-6, rtol=0)
    # Understanding rows on swapped weights = generation rows on the original ones (and the reverse).
    torch.testing.assert_close(run_layer(tiny_bagel, layer, x, all_und, causal), base_gen, atol=1e-6, rtol=0)
    torch.testing.assert_close(run_layer(tiny_bagel, layer, x, all_gen, causal), base_und, atol=1e-6, rtol=0)


@pytest.mark.parametrize("expert", ["und", "gen"])
def test_changing_one_expert_changes_exactly_the_tokens_routed_to_it(tiny_bagel, expert):
    """Through `MoTDecoderLayer.forward`, module by module: perturb one module of one expert; the
    tokens routed to that expert change, the other tokens stay bit-identical. The other expert's tokens
    only attend among themselves here, so nothing can reach them through the shared attention; a mask
    ignored or inverted (in any of the layer's routings) fails this."""
    import copy

    layer = expert_layer(tiny_bagel)
    x = torch.randn(len(GEN_ROWS), tiny_bagel.config.llm.hidden_size, generator=torch.Generator().manual_seed(0))
    mine = GEN_ROWS if expert == "gen" else ~GEN_ROWS
    # Rows of this expert see every token; rows of the other expert only see each other.
    attend = mine[:, None] | (~mine[:, None] & ~mine[None, :])
    base = run_layer(tiny_bagel, layer, x, GEN_ROWS, attend)
    g = torch.Generator().manual_seed(1)
    for name in EXPERT_MODULES:
        changed = copy.deepcopy(layer)
        module = changed.get_submodule(name if expert == "und" else f"{name}_moe_gen")
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=g))
        out = run_layer(tiny_bagel, changed, x, GEN_ROWS, attend)
        assert torch.equal(out[~mine], base[~mine]), f"{expert} {name}: tokens of the other expert changed"
        assert (out[mine] - base[mine]).abs().amax(-1).min() > 1e-4, f"{expert} {name}: its own tokens did not change"


def test_packed_attention_equals_one_by_one(tiny_bagel):
    samples = [mixed_sample(tiny_bagel, s) for s in range(3)]
    samples[1] = samples[1][1:]  # different structures in one pack
    with torch.no_grad():
        packed = pack_for(tiny_bagel, samples)
        noise = torch.randn(packed.packed_timesteps.shape[0], tiny_bagel.config.patch_latent_dim)
        out = tiny_bagel.model(**packed.model_inputs(), noise=noise)
        ce, mse, row = [], [], 0
        for s in samples:
            single = pack_for(tiny_bagel, [s])
            n = single.packed_timesteps.shape[0]
            o = tiny_bagel.model(**single.model_inputs(), noise=noise[row : row + n])
            row += n
            ce.append(o["ce"])
            mse.append(o["mse"])
    torch.testing.assert_close(out["ce"], torch.cat(ce), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["mse"], torch.cat(mse), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("edit_context", [False, True], ids=["vit", "vae-and-vit"])
def test_kv_cache_decoding_equals_full_recomputation(tiny_bagel, edit_context):
    """The logits of every cached greedy step equal one uncached packed forward's (fp32, atol 1e-5),
    after ViT tokens and, in an edit's context, after a clean VAE latent on the generation expert."""
    model, special = tiny_bagel.model, tiny_bagel.special
    lm_head = model.language_model.lm_head
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(3, 32, 32, generator=g) * 2 - 1
    latent = torch.randn(tiny_bagel.config.vae.z_channels, 4, 4, generator=g)
    prompt = ids(tiny_bagel, "What colour is the object?")
    ctx, items = new_context(model), []
    if edit_context:
        append_vae_latent(model, ctx, latent, special)
        items.append(VaeLatent(latent, loss=False))
    append_vit_image(model, ctx, pixels, special)
    append_text(model, ctx, prompt, special)
    items += [VitImage(pixels), Text(prompt)]
    steps = []

    def logits_fn(hidden):
        logits = lm_head(hidden)
        steps.append(logits[-1].clone())
        # <eos> is never chosen, so every one of the steps runs and is compared.
        return logits.index_fill(-1, torch.tensor([special.eos]), float("-inf"))

    max_new = 8
    generated = decode_text(model, ctx, special, max_new_tokens=max_new, logits_fn=logits_fn)
    assert len(generated) == len(steps) == max_new
    # Full recomputation: one packed pass over the context + <bos> + the generated tokens.
    batch = pack_for(tiny_bagel, [items + [Text(generated, loss=True)]])
    with torch.no_grad():
        full = model(**batch.model_inputs())["ce_logits"]
    # Row k sits at <bos> (k = 0) or at generated token k-1: it predicts generated token k.
    assert full.shape == (max_new + 1, tiny_bagel.config.llm.vocab_size)
    torch.testing.assert_close(torch.stack(steps), full[:max_new], atol=1e-5, rtol=0)
    assert full[:max_new].index_fill(-1, torch.tensor([special.eos]), float("-inf")).argmax(-1).tolist() == generated


def test_text_to_image_size_and_editing_uses_source(tiny_bagel):
    model, vae, special = tiny_bagel.model, tiny_bagel.vae, tiny_bagel.special
    opts = FlowSampling(num_steps=4, seed=0)
    hw = latent_grid(model, 48, 32)
    prompt = ids(tiny_bagel, "a striped teal star")
    ctx, empty = new_context(model), new_context(model)
    append_text(model, ctx, prompt, special)
    latent = sample_latent(model, ctx, hw, special, opts, cfg_text_ctx=empty)
    image = vae.decode(latent)
    assert image.shape == (1, 3, 48, 32)

    def edit(source):
        with torch.no_grad():
            z = vae.encode(source[None], sample=False)
        full, text_free, image_free = new_context(model), None, new_context(model)
        append_vae_latent(model, full, z[0], special)
        append_vit_image(model, full, source, special)
        text_free = full.fork()
        append_text(model, full, prompt, special)
        append_text(model, image_free, prompt, special)
        return sample_latent(model, full, latent_grid(model, 32, 32), special, opts, text_free, image_free)

    a = edit(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    b = edit(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    assert a.shape == (1, tiny_bagel.config.vae.z_channels, 4, 4)
    assert not torch.allclose(a, b, atol=1e-4), "the edit must depend on the source image"


SDPA_FORWARD = "aten._scaled_dot_product_flash_attention_for_cpu"


def attention_flops(bundle, batch) -> int:
    """Analytic attention FLOPs of a packed forward: per sample (LLM) or image (ViT) of L tokens and
    per layer, scores Q K^T and weighted values P V are 2 * L^2 * head_dim multiply-adds per head."""
    llm, vit = bundle.config.llm, bundle.config.vit
    total = sum(4 * n * n * llm.num_attention_heads * llm.head_dim * llm.num_hidden_layers for n in batch.sample_lens)
    if batch.vit_token_seqlens is not None:
        vit_head_dim = vit.hidden_size // vit.num_attention_heads
        runs = vit.num_hidden_layers - 1  # the release's vit_config counts one layer more than runs
        total += sum(4 * int(n) ** 2 * vit.num_attention_heads * vit_head_dim * runs for n in batch.vit_token_seqlens)
    return total


def counted(fn):
    """{op: FLOPs} of `fn()`, counted as the FLOPs benchmark counts (attention included)."""
    from benchmarks.common import flop_counter

    with flop_counter() as counter:
        fn()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def test_frozen_backbone_training_step_flops_at_most_2_1x_forward(tiny_bagel):
    model = tiny_bagel.model.train().freeze()
    embed = model.language_model.model.embed_tokens
    embed.weight.requires_grad_(True)  # a trainable input embedding, the backbone frozen
    batch = pack_for(tiny_bagel, [mixed_sample(tiny_bagel, s) for s in range(2)])
    noise = torch.randn(batch.packed_timesteps.shape[0], tiny_bagel.config.patch_latent_dim)

    def loss():
        out = model(**batch.model_inputs(), noise=noise)
        return out["ce"].mean() + out["mse"].mean()

    def no_grad_loss():
        with torch.no_grad():
            loss()

    fwd, step = counted(no_grad_loss), counted(lambda: loss().backward())
    # Attention is counted, exactly as the formula says: LLM samples and ViT images, every layer.
    assert fwd.get(SDPA_FORWARD, 0) == step.get(SDPA_FORWARD, 0) == attention_flops(tiny_bagel, batch) > 0
    assert step.get(SDPA_FORWARD + "_backward", 0) > 0, "the backward through attention must be counted too"
    ratio = sum(step.values()) / sum(fwd.values())
    assert embed.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if p is not embed.weight)
    assert ratio <= 2.1, f"training step costs {ratio:.2f}x the forward"


def test_forward_flops_grow_with_the_square_of_the_sequence_through_attention(tiny_bagel):
    """Text-only packs of n, 2n and 3n words: everything but attention is linear in the length, so
    the counted total's second difference is the analytic attention term's (and is not zero)."""
    model = tiny_bagel.model.eval()
    word = ids(tiny_bagel, "star")
    totals, attention, lengths = [], [], []
    for n in (16, 32, 48):
        batch = pack_for(tiny_bagel, [[Text(word * n, loss=True)]])
        with torch.no_grad():
            ops = counted(lambda: model(**batch.model_inputs()))
        assert ops.get(SDPA_FORWARD, 0) == attention_flops(tiny_bagel, batch) > 0
        totals.append(sum(ops.values()))
        attention.append(attention_flops(tiny_bagel, batch))
        lengths.append(batch.sequence_length)
    step = lengths[1] - lengths[0]
    assert lengths[2] - lengths[1] == step > 0
    second = totals[0] - 2 * totals[1] + totals[2]
    llm = tiny_bagel.config.llm
    # L^2 - 2 (L + s)^2 + (L + 2s)^2 = 2 s^2: per head and layer, attention's 4 L^2 head_dim gives 8 s^2 head_dim.
    expected = 8 * step**2 * llm.head_dim * llm.num_attention_heads * llm.num_hidden_layers
    assert second == attention[0] - 2 * attention[1] + attention[2] == expected
    assert attention[2] > 0.1 * totals[2], "at this length attention is a visible share of the forward"


def test_library_imports_no_ray_or_mlflow():
    code = (
        "import sys, omnipersona, omnipersona.model.checkpoint, omnipersona.model.sampling, omnipersona.model.tiny\n"
        "import pkgutil, importlib\n"
        "for m in pkgutil.walk_packages(omnipersona.__path__, 'omnipersona.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'mlflow', 'pipelines', 'jobs'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pipelines_import_neither_the_world_nor_pretraining():
    """Evaluation plug-ins (the world's eval sets, its probe) are named by the job config and loaded at
    run time: no module under pipelines/ imports omnipersona.world or omnipersona.pretrain, neither
    at the top nor inside a function (ast), nor through another module (sys.modules after importing them all)."""
    import ast
    from pathlib import Path

    forbidden = ("omnipersona.world", "omnipersona.pretrain")

    def is_forbidden(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    root = Path(__file__).resolve().parents[2]
    direct = []
    for path in sorted((root / "pipelines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            direct += [f"{path.relative_to(root)}: {n}" for n in names if is_forbidden(n)]
    assert not direct, direct
    code = (
        "import sys, pkgutil, importlib, pipelines\n"
        "for m in pkgutil.walk_packages(pipelines.__path__, 'pipelines.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(k for k in sys.modules if k.startswith({forbidden!r}))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
