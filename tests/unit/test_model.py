"""The BAGEL architecture: layout round trip, expert routing, packing, KV cache, sampling, FLOPs."""
import subprocess
import sys

import pytest
import torch

from omnipersona.model.checkpoint import CheckpointError, load_bagel, save_bagel
from omnipersona.model.llm import _route
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


def test_each_token_uses_its_own_expert(tiny_bagel):
    """Same layer input; perturbing one expert changes only the per-expert outputs of its tokens."""
    torch.manual_seed(0)
    layer = tiny_bagel.model.language_model.model.layers[0]
    x = torch.randn(10, tiny_bagel.config.llm.hidden_size)
    gen = torch.tensor([False] * 5 + [True] * 5)

    def per_expert_outputs():
        attn = layer.self_attn
        qkv = _route(x, gen, lambda t: attn._qkv(t, False), lambda t: attn._qkv(t, True))
        mlp = _route(
            x, gen,
            lambda t: layer.mlp(layer.post_attention_layernorm(t)),
            lambda t: layer.mlp_moe_gen(layer.post_attention_layernorm_moe_gen(t)),
        )
        norm = _route(x, gen, layer.input_layernorm, layer.input_layernorm_moe_gen)
        return qkv, mlp, norm

    def full_layer():
        from omnipersona.model.llm import AttentionSpec

        cos, sin = tiny_bagel.model.language_model.model.rotary_emb(torch.arange(10), x.dtype)
        spec = AttentionSpec(sample_lens=[10], masks=[torch.ones(10, 10, dtype=torch.bool)])
        return layer(x, gen, cos, sin, spec)

    with torch.no_grad():
        base, base_layer = per_expert_outputs(), full_layer()
        for name, p in layer.named_parameters():
            if "moe_gen" in name:
                p.add_(torch.randn_like(p) * 0.5)
        perturbed, perturbed_layer = per_expert_outputs(), full_layer()
    for b, p in zip(base, perturbed):
        assert torch.equal(b[:5], p[:5]), "understanding tokens must not see generation weights"
        assert not torch.allclose(b[5:], p[5:]), "generation tokens must use generation weights"
    # Attention still mixes: understanding tokens' layer outputs change through the shared attention.
    assert not torch.allclose(base_layer[:5], perturbed_layer[:5])


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


def test_kv_cache_decoding_equals_full_recomputation(tiny_bagel):
    model, special = tiny_bagel.model, tiny_bagel.special
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(3, 32, 32, generator=g) * 2 - 1
    prompt = ids(tiny_bagel, "What colour is the object?")
    ctx = new_context(model)
    append_vit_image(model, ctx, pixels, special)
    append_text(model, ctx, prompt, special)
    generated = decode_text(model, ctx, special, max_new_tokens=6)
    assert len(generated) > 0
    # Full recomputation: one packed causal pass over image + prompt + <bos> + generated tokens.
    batch = pack_for(tiny_bagel, [[VitImage(pixels), Text(prompt), Text(generated, loss=True)]])
    with torch.no_grad():
        out = model(**batch.model_inputs())
    full_argmax = out["ce_logits"].argmax(-1).tolist()
    # Logits at <bos> and each generated token predict the next generated token.
    assert full_argmax[: len(generated)] == generated


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


def test_frozen_backbone_training_step_flops_at_most_2_1x_forward(tiny_bagel):
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_bagel.model.train().freeze()
    embed = model.language_model.model.embed_tokens
    embed.weight.requires_grad_(True)  # a trainable input embedding, the backbone frozen
    batch = pack_for(tiny_bagel, [mixed_sample(tiny_bagel, s) for s in range(2)])
    noise = torch.randn(batch.packed_timesteps.shape[0], tiny_bagel.config.patch_latent_dim)

    def loss():
        out = model(**batch.model_inputs(), noise=noise)
        return out["ce"].mean() + out["mse"].mean()

    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            loss()
    with FlopCounterMode(display=False) as step:
        loss().backward()
    ratio = step.get_total_flops() / fwd.get_total_flops()
    assert embed.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if p is not embed.weight)
    assert ratio <= 2.1, f"training step costs {ratio:.2f}x the forward"


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
