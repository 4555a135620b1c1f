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


def _text_rows(vocab: int, rows: list[list[int]], device, virtual_table, virtual_gen_start):
    """Packed token ids of `rows` plus the bank rows of their concept tokens (ids >= vocab):
    (token ids, embeds override or None, generation-expert indexes or None)."""
    flat = [t for row in rows for t in row]
    token_ids = torch.tensor([t if t < vocab else 0 for t in flat], device=device)
    virt = [i for i, t in enumerate(flat) if t >= vocab]
    if not virt:
        return token_ids, None, None
    if virtual_table is None:
        raise ValueError("text holds concept tokens but no concept table was given")
    bank_rows = torch.tensor([flat[i] - vocab for i in virt], device=device)
    override = (torch.tensor(virt, device=device), virtual_table[bank_rows])
    gen = [i for i in virt if virtual_gen_start is not None and flat[i] - vocab >= virtual_gen_start]
    return token_ids, override, torch.tensor(gen, dtype=torch.long, device=device) if gen else None


def append_text_batch(
    model: Bagel,
    ctxs: list[Context],
    ids: list[list[int]],
    special: SpecialTokens,
    virtual_table: torch.Tensor | None = None,
    virtual_gen_start: int | None = None,
) -> list[torch.Tensor]:
    """Append `<|im_start|> ids[r] <|im_end|>` to every context r in one forward; ids >= vocab are rows
    of `virtual_table` (concept tokens: each row's ids address its own concept's rows of one bank).
    Returns each row's hidden states. Contexts must be distinct (fork shared ones first)."""
    rows = [[special.bos] + list(r) + [special.eos] for r in ids]
    token_ids, override, gen_idx = _text_rows(model.config.llm.vocab_size, rows, model.llm2vae.weight.device, virtual_table, virtual_gen_start)
    hidden, positions = model.prefill_text_batch([c.cache for c in ctxs], [c.position for c in ctxs], token_ids,
                                                 [len(r) for r in rows], override, gen_idx)
    for ctx, position in zip(ctxs, positions):
        ctx.position = position
    return hidden


def append_text(
    model: Bagel,
    ctx: Context,
    ids: list[int],
    special: SpecialTokens,
    virtual_table: torch.Tensor | None = None,
    virtual_gen_start: int | None = None,
) -> torch.Tensor:
    """Append `<|im_start|> ids <|im_end|>`; ids >= vocab are rows of `virtual_table` (concept tokens)."""
    return append_text_batch(model, [ctx], [ids], special, virtual_table, virtual_gen_start)[0]


def _prefill_images(prefill, ctxs: list[Context], images: list[torch.Tensor], special: SpecialTokens) -> None:
    """Append one image per context with `prefill` (one forward for all) and advance each position."""
    positions = prefill([c.cache for c in ctxs], [c.position for c in ctxs], images, special.image_markers)
    for ctx, position in zip(ctxs, positions):
        ctx.position = position


def append_vit_image_batch(model: Bagel, ctxs: list[Context], pixels: list[torch.Tensor], special: SpecialTokens) -> None:
    """One ViT image per context, one forward (and one ViT call) for all."""
    _prefill_images(model.prefill_vit_image_batch, ctxs, pixels, special)


def append_vit_image(model: Bagel, ctx: Context, pixels: torch.Tensor, special: SpecialTokens) -> None:
    append_vit_image_batch(model, [ctx], [pixels], special)


def append_vae_latent_batch(model: Bagel, ctxs: list[Context], latents: list[torch.Tensor], special: SpecialTokens) -> None:
    """One clean VAE latent per context, one forward for all."""
    _prefill_images(model.prefill_vae_latent_batch, ctxs, latents, special)


def append_vae_latent(model: Bagel, ctx: Context, latent: torch.Tensor, special: SpecialTokens) -> None:
    append_vae_latent_batch(model, [ctx], [latent], special)


@torch.no_grad()
def decode_text_batch(
    model: Bagel,
    ctxs: list[Context],
    special: SpecialTokens,
    max_new_tokens: int | list[int] = 64,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    first_token_logits_hook: Callable[[torch.Tensor], None] | None = None,
    virtual_table: torch.Tensor | None = None,
) -> list[list[int]]:
    """Greedy decoding of every context at once (each from `<|im_start|>` until its `<|im_end|>` or
    its own `max_new_tokens`); works on forks of `ctxs`. Each step is one forward over the rows still
    decoding: a row that stops leaves the batch, the others go on.

    `logits_fn(hidden [rows, D])` maps hidden states to logits (default: the LM head); the concept
    layer extends it with its identifiers, whose rows of `virtual_table` are fed back when generated.
    `first_token_logits_hook` sees the first step's logits [len(ctxs), V] (recognition reads its
    yes-probability there).
    """
    limits = [max_new_tokens] * len(ctxs) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(ctxs) or min(limits, default=1) < 1:
        raise ValueError(f"one max_new_tokens >= 1 per context, got {max_new_tokens} for {len(ctxs)} contexts")
    ctxs = [c.fork() for c in ctxs]
    logits_fn = logits_fn or model.language_model.lm_head
    vocab = model.config.llm.vocab_size
    out: list[list[int]] = [[] for _ in ctxs]
    tokens = [special.bos] * len(ctxs)
    active = list(range(len(ctxs)))
    step = 0
    while active:
        # A generated concept identifier (>= vocab) is fed back as its bank row.
        ids, override, _ = _text_rows(vocab, [[tokens[r]] for r in active], model.llm2vae.weight.device, virtual_table, None)
        rows = [ctxs[r] for r in active]
        hidden, positions = model.prefill_text_batch([c.cache for c in rows], [c.position for c in rows], ids, [1] * len(rows), override)
        for ctx, position in zip(rows, positions):
            ctx.position = position
        logits = logits_fn(torch.cat(hidden))
        if step == 0 and first_token_logits_hook is not None:
            first_token_logits_hook(logits)
        still = []
        for r, token in zip(active, logits.argmax(-1).tolist()):
            tokens[r] = token
            if token != special.eos:
                out[r].append(token)
                if len(out[r]) < limits[r]:
                    still.append(r)
        active, step = still, step + 1
    return out


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
    """Greedy decoding of one context (`decode_text_batch` for one row); the hook sees logits [V]."""
    if max_new_tokens < 1:
        return []
    hook = None if first_token_logits_hook is None else (lambda logits: first_token_logits_hook(logits[0]))
    return decode_text_batch(model, [ctx], special, max_new_tokens, logits_fn, hook, virtual_table)[0]


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


def initial_noise(model: Bagel, hw: tuple[int, int], seed: int | None) -> torch.Tensor:
    """The latent tokens a sample starts from: [h*w, p*p*c] drawn from its own seeded generator."""
    g = torch.Generator(device="cpu")
    if seed is not None:
        g.manual_seed(seed)
    x = torch.randn(hw[0] * hw[1], model.config.patch_latent_dim, generator=g)
    return x.to(device=model.llm2vae.weight.device, dtype=model.llm2vae.weight.dtype)


@torch.no_grad()
def sample_latent_batch(
    model: Bagel,
    ctxs: list[Context],
    hws: list[tuple[int, int]],
    special: SpecialTokens,
    opts: FlowSampling,
    cfg_text_ctxs: list[Context | None] | None = None,
    cfg_img_ctxs: list[Context | None] | None = None,
    seeds: list[int | None] | None = None,
) -> list[torch.Tensor]:
    """Euler integration of the learned velocity from noise (t = 1) to data (t = 0) for several
    samples at once: the same steps for all, each sample's noise from its own seed (default
    `opts.seed`), its own size and guidance contexts (None: no such guidance for that sample).
    Each step is ONE forward over every sample's branches (conditional, text-free, image-free).

    Returns one latent [1, z, h*p, w*p] per sample, as `sample_latent` gives for it alone.
    """
    n = len(ctxs)
    text_ctxs = list(cfg_text_ctxs or [None] * n)
    img_ctxs = list(cfg_img_ctxs or [None] * n)
    seeds = [opts.seed] * n if seeds is None else list(seeds)
    if not len(hws) == len(text_ctxs) == len(img_ctxs) == len(seeds) == n:
        raise ValueError("one size, guidance context (or None) and seed per sample")
    xs = [initial_noise(model, hw, seed) for hw, seed in zip(hws, seeds)]
    ts = shift_timesteps(torch.linspace(1, 0, opts.num_steps), opts.timestep_shift)
    for i in range(opts.num_steps - 1):
        t, dt = float(ts[i]), float(ts[i] - ts[i + 1])
        in_interval = opts.cfg_interval[0] < t <= opts.cfg_interval[1]
        text_scale = opts.cfg_text_scale if in_interval else 1.0
        img_scale = opts.cfg_img_scale if in_interval else 1.0
        # Every sample's branches: conditional, then text-free and image-free when guided.
        branches = []
        for s in range(n):
            guided = [ctxs[s]]
            if text_ctxs[s] is not None and text_scale > 1.0:
                guided.append(text_ctxs[s])
                if img_ctxs[s] is not None and img_scale > 1.0:
                    guided.append(img_ctxs[s])
            branches.append(guided)
        flat = [(c, s) for s, guided in enumerate(branches) for c in guided]
        vs = iter(model.predict_velocity_batch([c.cache for c, _ in flat], [c.position for c, _ in flat],
                                               [xs[s] for _, s in flat], t, [hws[s] for _, s in flat], special.image_markers))
        for s, guided in enumerate(branches):
            v = next(vs)
            if len(guided) > 1:
                v_text_free = next(vs)
                mixed = v_text_free + text_scale * (v - v_text_free)
                if len(guided) > 2:
                    v_img_free = next(vs)
                    mixed = v_img_free + img_scale * (mixed - v_img_free)
                # Global renorm: never let guidance inflate the velocity's norm beyond the conditional one.
                scale = (v.norm() / (mixed.norm() + 1e-8)).clamp(min=opts.cfg_renorm_min, max=1.0)
                v = mixed * scale
            xs[s] = xs[s] - v * dt
    return [model.unpatchify_latent(x, *hw) for x, hw in zip(xs, hws)]


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
    return sample_latent_batch(model, [ctx], [hw], special, opts, [cfg_text_ctx], [cfg_img_ctx])[0]


def latent_grid(model: Bagel, height: int, width: int) -> tuple[int, int]:
    d = model.config.latent_downsample
    if height % d or width % d:
        raise ValueError(f"image size {height}x{width} must be a multiple of {d} (VAE downsample x latent patch)")
    return height // d, width // d
