"""Inference loops over a KV cache: greedy text decoding and rectified-flow image sampling.

A `Context` is one KV cache plus its next rope position. Conditioning (text, ViT images, clean VAE
latents) is appended to contexts; text-to-image and editing denoise a latent against three contexts
for classifier-free guidance, as BAGEL does:
- full: everything (instruction, and for editing the source image);
- text-free (text CFG): the same without the instruction;
- image-free (image CFG, editing): the same without the source image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .bagel import Bagel, shift_timesteps
from .llm import KVCache
from .tokenizer import SpecialTokens


@dataclass
class Context:
    cache: KVCache
    position: int = 0

    def fork(self) -> "Context":
        return Context(self.cache.clone(), self.position)


def new_context(model: Bagel) -> Context:
    return Context(model.new_cache(), 0)


def append_text(
    model: Bagel,
    ctx: Context,
    ids: list[int],
    special: SpecialTokens,
    virtual_table: torch.Tensor | None = None,
    virtual_gen_start: int | None = None,
) -> torch.Tensor:
    """Append `<|im_start|> ids <|im_end|>`; ids >= vocab are rows of `virtual_table` (concept tokens)."""
    vocab = model.config.llm.vocab_size
    seq = [special.bos] + list(ids) + [special.eos]
    device = model.llm2vae.weight.device
    token_ids = torch.tensor([t if t < vocab else 0 for t in seq], device=device)
    override = gen_idx = None
    virt = [i for i, t in enumerate(seq) if t >= vocab]
    if virt:
        if virtual_table is None:
            raise ValueError("text holds concept tokens but no concept table was given")
        rows = torch.tensor([seq[i] - vocab for i in virt], device=device)
        override = (torch.tensor(virt, device=device), virtual_table[rows])
        if virtual_gen_start is not None:
            gen = [i for i in virt if seq[i] - vocab >= virtual_gen_start]
            gen_idx = torch.tensor(gen, dtype=torch.long, device=device) if gen else None
    hidden, ctx.position = model.prefill_text(ctx.cache, ctx.position, token_ids, override, gen_idx)
    return hidden


def append_vit_image(model: Bagel, ctx: Context, pixels: torch.Tensor, special: SpecialTokens) -> None:
    ctx.position = model.prefill_vit_image(ctx.cache, ctx.position, pixels, special.image_markers)


def append_vae_latent(model: Bagel, ctx: Context, latent: torch.Tensor, special: SpecialTokens) -> None:
    ctx.position = model.prefill_vae_latent(ctx.cache, ctx.position, latent, special.image_markers)


@torch.no_grad()
def decode_text(
    model: Bagel,
    ctx: Context,
    special: SpecialTokens,
    max_new_tokens: int = 64,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    first_token_logits_hook: Callable[[torch.Tensor], None] | None = None,
    virtual_table: torch.Tensor | None = None,
) -> list[int]:
    """Greedy decoding from `<|im_start|>` until `<|im_end|>`; works on a fork of `ctx`.

    `logits_fn(hidden)` maps hidden states to logits (default: the LM head); the concept layer
    extends it with its identifiers, whose rows of `virtual_table` are fed back when generated. `first_token_logits_hook` sees the first step's logits
    (recognition reads its yes-probability there).
    """
    ctx = ctx.fork()
    logits_fn = logits_fn or model.language_model.lm_head
    device = model.llm2vae.weight.device
    vocab = model.config.llm.vocab_size
    out: list[int] = []
    token = special.bos
    for step in range(max_new_tokens):
        override = None
        if token >= vocab:  # a generated concept identifier: feed its bank row back
            override = (torch.tensor([0], device=device), virtual_table[token - vocab][None])
        ids = torch.tensor([token if token < vocab else 0], device=device)
        hidden, ctx.position = model.prefill_text(ctx.cache, ctx.position, ids, override)
        logits = logits_fn(hidden[-1:])[0]
        if step == 0 and first_token_logits_hook is not None:
            first_token_logits_hook(logits)
        token = int(torch.argmax(logits))
        if token == special.eos:
            break
        out.append(token)
    return out


@dataclass
class FlowSampling:
    """Defaults are BAGEL's: 50 steps, shift 3.0, text CFG 4.0, image CFG 2.0 (editing), CFG in t in (0.4, 1]."""

    num_steps: int = 50
    timestep_shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 2.0
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    cfg_renorm_min: float = 0.0
    seed: int | None = 0


@torch.no_grad()
def sample_latent(
    model: Bagel,
    ctx: Context,
    hw: tuple[int, int],
    special: SpecialTokens,
    opts: FlowSampling,
    cfg_text_ctx: Context | None = None,
    cfg_img_ctx: Context | None = None,
) -> torch.Tensor:
    """Euler integration of the learned velocity from noise (t = 1) to data (t = 0).

    Returns the latent [1, z, h*p, w*p] for an image of hw latent tokens (h, w).
    """
    device = model.llm2vae.weight.device
    g = torch.Generator(device="cpu")
    if opts.seed is not None:
        g.manual_seed(opts.seed)
    n = hw[0] * hw[1]
    x = torch.randn(n, model.config.patch_latent_dim, generator=g).to(device=device, dtype=model.llm2vae.weight.dtype)
    ts = shift_timesteps(torch.linspace(1, 0, opts.num_steps), opts.timestep_shift)
    markers = special.image_markers
    for i in range(opts.num_steps - 1):
        t, dt = float(ts[i]), float(ts[i] - ts[i + 1])
        in_interval = opts.cfg_interval[0] < t <= opts.cfg_interval[1]
        v = model.predict_velocity(ctx.cache, ctx.position, x, t, hw, markers)
        text_scale = opts.cfg_text_scale if in_interval else 1.0
        img_scale = opts.cfg_img_scale if in_interval else 1.0
        if cfg_text_ctx is not None and text_scale > 1.0:
            v_text_free = model.predict_velocity(cfg_text_ctx.cache, cfg_text_ctx.position, x, t, hw, markers)
            guided = v_text_free + text_scale * (v - v_text_free)
            if cfg_img_ctx is not None and img_scale > 1.0:
                v_img_free = model.predict_velocity(cfg_img_ctx.cache, cfg_img_ctx.position, x, t, hw, markers)
                guided = v_img_free + img_scale * (guided - v_img_free)
            # Global renorm: never let guidance inflate the velocity's norm beyond the conditional one.
            scale = (v.norm() / (guided.norm() + 1e-8)).clamp(min=opts.cfg_renorm_min, max=1.0)
            v = guided * scale
        x = x - v * dt
    return model.unpatchify_latent(x, *hw)


def latent_grid(model: Bagel, height: int, width: int) -> tuple[int, int]:
    d = model.config.latent_downsample
    if height % d or width % d:
        raise ValueError(f"image size {height}x{width} must be a multiple of {d} (VAE downsample x latent patch)")
    return height // d, width // d
