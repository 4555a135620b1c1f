"""The Qwen2 decoder with Mixture-of-Transformer experts (MoT), over packed token streams.

Every layer holds two full weight sets: the understanding expert (`q_proj`, `mlp`, ...) and the
generation expert (`q_proj_moe_gen`, `mlp_moe_gen`, ...). Tokens of all samples in a pack share ONE
self-attention; each token's norms, projections and MLP come from its own expert, chosen by a
boolean `gen_mask` (True = generation expert). Routing is positional and given by the caller.

Attention is described by `AttentionSpec`: either per-sample dense masks (training packs) or
"each row attends to its own whole KV cache, causal / full among its new tokens" (inference with
caches, one per row of a batch).

Two switches on `Qwen2MoTModel` (issue 19), both exact (same values within fp32 rounding):
- `attention_impl`, how a training pack's samples attend (`AttentionSpec.impl` overrides it per call):
  "auto" (default): "padded" on a GPU, "loop" on a CPU. Measured on CPU (docs/performance.md,
  issue 19) the per-sample loop is the faster one there: a CPU SDPA call costs almost nothing
  beyond its arithmetic, and one call over a padded pack computes the padding too (1.6x the
  attention area of the benchmark's pack); on a GPU the loop's cost is its many small kernels.
  "padded": ONE SDPA call per layer over all samples, placed in rows as long as the
  pack's longest sample (short samples share a row, first-fit decreasing), each sample with its own
  mask block. Attention work and mask memory are rows x longest^2, not pack^2: the only waste is
  the padding left in the rows and the blocks masked off between samples sharing a row.
  "flex": ONE `flex_attention` call per layer over the whole pack (no padding) with a block mask
  built from each token's sample and the samples' own masks; blocks with no allowed pair are
  skipped. The right shape for a GPU (compiled there); on CPU torch runs it eagerly through a dense
  [heads, pack, pack] score matrix, so it is the slowest choice on CPU.
  "loop": one SDPA call per sample, the reference the others are tested against.
- `expert_order` (default True): a pack's tokens are sorted by expert once per forward (understanding
  rows, then generation rows, each in pack order), every norm / projection / MLP then runs on one
  contiguous slice per expert, and the order is undone once at the end. False: the reference, which
  gathers and scatters rows around every module (`_route` with a boolean mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import LLMConfig
from .layers import RMSNorm, RotaryEmbedding, SwiGLU, apply_rope


ATTENTION_IMPLS = ("auto", "padded", "flex", "loop")


def resolve_attention_impl(impl: str | None, device: torch.device) -> str:
    """"auto" (or None) -> "padded" on a GPU, "loop" elsewhere (see the module docstring)."""
    if impl in (None, "auto"):
        return "padded" if device.type == "cuda" else "loop"
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
    return impl


class ExpertOrder:
    """A pack's tokens sorted by expert: understanding rows first, then generation rows, each group
    in pack order. `order[i]` is the pack position of stream row i; `inverse[p]` the stream row of
    pack position p; `sizes` = [understanding rows, generation rows]."""

    def __init__(self, gen_mask: torch.Tensor):
        self.order = torch.argsort(gen_mask.to(torch.int8), stable=True)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(self.order.numel(), device=self.order.device)
        n_gen = int(gen_mask.sum())
        self.sizes = [gen_mask.numel() - n_gen, n_gen]


def _route(x: torch.Tensor, gen_mask, und_fn, gen_fn):
    """Apply `und_fn` to understanding tokens and `gen_fn` to generation tokens (row-wise).

    `gen_mask` is None (all understanding), a boolean mask over rows in pack order (the reference:
    gather each expert's rows, scatter the results back), or an `ExpertOrder` (rows already sorted
    by expert: each expert runs on its contiguous slice, no gather or scatter).
    With a mask or an order, both experts are always called (possibly on zero rows): every rank of
    a sharded (ZeRO-3) run then makes the same module calls, whatever tokens its share holds.
    """
    if gen_mask is None:
        return und_fn(x)
    if isinstance(gen_mask, ExpertOrder):
        und, gen = x.split(gen_mask.sizes)  # split, not slices: one backward (see _packed_attention)
        return torch.cat([und_fn(und), gen_fn(gen)], dim=0)
    und_idx = (~gen_mask).nonzero(as_tuple=True)[0]
    gen_idx = gen_mask.nonzero(as_tuple=True)[0]
    und_out = und_fn(x[und_idx])
    gen_out = gen_fn(x[gen_idx])
    out = und_out.new_empty((x.shape[0],) + tuple(und_out.shape[1:]))
    return out.index_copy(0, und_idx, und_out).index_copy(0, gen_idx, gen_out)


@dataclass
class KVCache:
    """Keys/values of one sequence, per layer: [tokens, kv_heads, head_dim]."""

    num_layers: int
    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def __post_init__(self):
        if not self.keys:
            self.keys = [None] * self.num_layers
            self.values = [None] * self.num_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[0]

    def clone(self) -> "KVCache":
        return KVCache(self.num_layers, list(self.keys), list(self.values))


@dataclass
class AttentionSpec:
    """How the new tokens attend.

    - training packs: `sample_lens` + `masks` (one [L, L] bool mask per sample, True = may attend);
    - cached inference: `caches`, one per row (a cache may be empty), and `sample_lens`, the new
      tokens of each row packed row after row. A row's tokens attend to its own cache only, and
      `causal` (or fully) among themselves; `update_cache` appends each row's new keys/values to
      its cache (False for denoising steps that must not grow the prefix). Rows that update need
      distinct caches; rows that only read may share one.

    `impl` (training packs): one of `ATTENTION_IMPLS`; None = the model's `attention_impl`. The
    index tensors and masks an impl needs are built once per spec (i.e. once per forward, shared by
    every layer) and kept in `_layouts`.
    """

    sample_lens: list[int] | None = None
    masks: list[torch.Tensor] | None = None
    caches: list[KVCache] | None = None
    causal: bool = True
    update_cache: bool = True
    impl: str | None = None
    _layouts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def layout(self, impl: str, order: "ExpertOrder | None", device) -> dict:
        """What `impl` needs for this pack with rows in `order` (None: pack order), built once."""
        key = (impl, id(order))
        hit = self._layouts.get(key)
        if hit is not None and hit[0] is order:
            return hit[1]
        build = {"padded": _padded_layout, "flex": _flex_layout}[impl]
        built = build([int(n) for n in self.sample_lens], self.masks, order, device)
        self._layouts[key] = (order, built)
        return built


# device type -> multiple the padded rows' length is rounded up to (none: the longest sample's)
PADDED_ROW_ALIGN = {"cuda": 16}


def _padded_layout(lens: list[int], masks, order: ExpertOrder | None, device) -> dict:
    """Samples placed in rows of the longest sample's length (first-fit decreasing: short samples
    share a row, side by side, each with its own mask block and nothing across blocks); `slots` is
    the row-major slot each stream row goes to, `mask` [rows, 1, longest, longest].

    Unused slots stay zero and attend to themselves only (their output is never read back), so no
    softmax row is empty and no real token sees them. With an expert order the stream is in that
    order: `slots` absorbs it (no extra copies). On devices listed in `PADDED_ROW_ALIGN` the row
    length is rounded up to that multiple (GPU attention kernels want aligned mask rows)."""
    align = PADDED_ROW_ALIGN.get(torch.device(device).type, 1)
    longest = -(-max(lens) // align) * align
    fill: list[int] = []  # used length of each row
    place = [None] * len(lens)  # (row, offset) of each sample
    for s in sorted(range(len(lens)), key=lambda i: -lens[i]):
        row = next((r for r, used in enumerate(fill) if used + lens[s] <= longest), None)
        if row is None:
            row = len(fill)
            fill.append(0)
        place[s] = (row, fill[row])
        fill[row] += lens[s]
    mask = torch.eye(longest, dtype=torch.bool, device=device).repeat(len(fill), 1, 1)
    starts = []
    for (row, off), m, length in zip(place, masks, lens):
        mask[row, off : off + length, off : off + length] = m
        starts.append(row * longest + off)
    lens_t = torch.tensor(lens, device=device)
    first = torch.tensor(starts, device=device)
    pack_starts = torch.cumsum(lens_t, 0) - lens_t
    sample = torch.repeat_interleave(torch.arange(len(lens), device=device), lens_t)
    slot_of_pack = first[sample] + torch.arange(int(lens_t.sum()), device=device) - pack_starts[sample]
    slots = slot_of_pack if order is None else slot_of_pack.index_select(0, order.order)
    return {"slots": slots, "mask": mask[:, None], "shape": (len(fill), longest)}


def _flex_layout(lens: list[int], masks, order: ExpertOrder | None, device) -> dict:
    """The block mask of the whole pack (pack order): token q may see token k iff both belong to the
    same sample s and masks[s][q - start_s, k - start_s]; looked up in the samples' own masks."""
    from torch.nn.attention.flex_attention import create_block_mask

    n = sum(lens)
    lens_t = torch.tensor(lens, device=device)
    starts = torch.cumsum(lens_t, 0) - lens_t
    sample = torch.repeat_interleave(torch.arange(len(lens), device=device), lens_t)
    local = torch.arange(n, device=device) - starts[sample]
    flat = torch.cat([m.to(device=device, dtype=torch.bool).reshape(-1) for m in masks])
    sizes = lens_t * lens_t
    base = torch.cumsum(sizes, 0) - sizes
    last = flat.numel() - 1

    def mask_mod(b, h, q, k):
        s = sample[q]
        idx = (base[s] + local[q] * lens_t[s] + local[k]).clamp(0, last)
        return (s == sample[k]) & flat[idx]

    block = create_block_mask(mask_mod, None, None, n, n, device=device)
    return {"block_mask": block}


_compiled_flex = None


def _flex_attention(q, k, v, block_mask):
    """flex_attention, compiled on GPU (its fused, block-sparse kernel); eager elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=True)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)


class MoTAttention(nn.Module):
    def __init__(self, cfg: LLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d, hq, hkv = cfg.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(d, hq, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(d, hkv, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(d, hkv, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(hq, d, bias=False))
            norm = (lambda: RMSNorm(self.head_dim, cfg.rms_norm_eps)) if cfg.qk_norm else nn.Identity
            setattr(self, f"q_norm{suffix}", norm())
            setattr(self, f"k_norm{suffix}", norm())

    def _qkv(self, x: torch.Tensor, gen: bool):
        s = "_moe_gen" if gen else ""
        n = x.shape[0]
        q = getattr(self, f"q_proj{s}")(x).view(n, self.num_heads, self.head_dim)
        k = getattr(self, f"k_proj{s}")(x).view(n, self.num_kv_heads, self.head_dim)
        v = getattr(self, f"v_proj{s}")(x).view(n, self.num_kv_heads, self.head_dim)
        q = getattr(self, f"q_norm{s}")(q)
        k = getattr(self, f"k_norm{s}")(k)
        return torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=-1)

    def forward(self, x, gen_mask, cos, sin, spec: AttentionSpec) -> torch.Tensor:
        """`x` rows in pack order (`gen_mask` a bool mask or None) or in expert order (`gen_mask` an
        `ExpertOrder`); the output rows are in the same order as `x`'s."""
        n = x.shape[0]
        qkv = _route(x, gen_mask, lambda t: self._qkv(t, False), lambda t: self._qkv(t, True))
        hq, hkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q = qkv[:, :hq].view(n, self.num_heads, self.head_dim)
        k = qkv[:, hq : hq + hkv].view(n, self.num_kv_heads, self.head_dim)
        v = qkv[:, hq + hkv :].view(n, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        order = gen_mask if isinstance(gen_mask, ExpertOrder) else None
        impl = resolve_attention_impl(spec.impl, q.device)
        if spec.caches is None and impl == "padded":
            out = self._padded_attention(q, k, v, spec, order)  # takes the expert order in its indices
        else:
            if order is not None:  # back to pack order for the per-sample / per-row paths
                q, k, v = (t.index_select(0, order.inverse) for t in (q, k, v))
            if spec.caches is not None:
                out = self._cached_attention(q, k, v, spec)
            elif impl == "flex":
                out = self._flex_packed_attention(q, k, v, spec)
            elif impl == "loop":
                out = self._packed_attention(q, k, v, spec)
            else:
                raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
            if order is not None:
                out = out.index_select(0, order.order)
        out = out.reshape(n, hq)
        return _route(out, gen_mask, self.o_proj, self.o_proj_moe_gen)

    def _sdpa(self, q, k, v, mask=None, is_causal=False):
        # [L, H, D] -> [1, H, L, D]; GQA handled by repeating kv heads (works on every SDPA backend).
        groups = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return o.squeeze(0).transpose(0, 1)

    def _packed_attention(self, q, k, v, spec: AttentionSpec):
        # `torch.split`, not slices: the backward of each slice `q[a:b]` allocates a zero tensor the
        # size of the whole pack and adds into it (O(samples x tokens), quadratic in the pack); a
        # split has one backward (a concatenation). Same values, linear cost.
        lens = [int(n) for n in spec.sample_lens]
        parts = zip(q.split(lens), k.split(lens), v.split(lens), spec.masks)
        return torch.cat([self._sdpa(qs, ks, vs, mask=m) for qs, ks, vs, m in parts], dim=0)

    def _padded_attention(self, q, k, v, spec: AttentionSpec, order: ExpertOrder | None):
        """All samples of the pack in ONE SDPA call: [rows, heads, longest, head_dim], each sample in
        its own mask block (unused slots see only themselves and are dropped on the way back)."""
        lay = spec.layout("padded", order, q.device)
        b, longest = lay["shape"]
        slots = lay["slots"]
        if ("bias", q.dtype) not in lay:  # the additive form of the masks, made once per forward
            lay[("bias", q.dtype)] = torch.zeros(lay["mask"].shape, dtype=q.dtype, device=q.device).masked_fill(
                ~lay["mask"], float("-inf"))
        groups = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        # index_copy / index_select: their backwards are a gather and an index_add (no sort, no
        # accumulate-put as advanced indexing has).
        q, k, v = (
            t.new_zeros((b * longest, self.num_heads, self.head_dim)).index_copy(0, slots, t)
            .view(b, longest, self.num_heads, self.head_dim).transpose(1, 2)
            for t in (q, k, v)
        )
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=lay[("bias", q.dtype)])
        return o.transpose(1, 2).reshape(b * longest, self.num_heads, self.head_dim).index_select(0, slots)

    def _flex_packed_attention(self, q, k, v, spec: AttentionSpec):
        """The whole pack (pack order) in ONE flex_attention call with the pack's block mask."""
        lay = spec.layout("flex", None, q.device)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        return _flex_attention(q, k, v, lay["block_mask"]).squeeze(0).transpose(0, 1)

    def _cached_attention(self, q, k, v, spec: AttentionSpec):
        lens = [int(n) for n in spec.sample_lens]
        if len(lens) == 1:
            return self._attend_cache(q, k, v, spec.caches[0], spec)
        # One SDPA per row (rows differ in cache length); every projection and MLP of the layer
        # already ran once over all rows' tokens.
        parts = zip(q.split(lens), k.split(lens), v.split(lens), spec.caches)
        return torch.cat([self._attend_cache(qs, ks, vs, cache, spec) for qs, ks, vs, cache in parts], dim=0)

    def _attend_cache(self, q, k, v, cache: KVCache, spec: AttentionSpec):
        past_k, past_v = cache.keys[self.layer_idx], cache.values[self.layer_idx]
        if past_k is not None:
            k_all, v_all = torch.cat([past_k, k], 0), torch.cat([past_v, v], 0)
        else:
            k_all, v_all = k, v
        if spec.update_cache:
            cache.keys[self.layer_idx], cache.values[self.layer_idx] = k_all, v_all
        n_new, n_all = q.shape[0], k_all.shape[0]
        mask = None
        if spec.causal and n_new > 1:
            # The prefix is fully visible; among new tokens, bottom-right-aligned causal.
            mask = torch.ones(n_new, n_all, dtype=torch.bool, device=q.device).tril(n_all - n_new)
        return self._sdpa(q, k_all, v_all, mask=mask)


class MoTDecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MoTAttention(cfg, layer_idx)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.mlp_moe_gen = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, gen_mask, cos, sin, spec):
        h = _route(x, gen_mask, self.input_layernorm, self.input_layernorm_moe_gen)
        x = x + self.self_attn(h, gen_mask, cos, sin, spec)
        h = _route(
            x,
            gen_mask,
            lambda t: self.mlp(self.post_attention_layernorm(t)),
            lambda t: self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(t)),
        )
        return x + h


class Qwen2MoTModel(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        if cfg.layer_module != "Qwen2MoTDecoderLayer":
            raise ValueError(f"only the MoT layout is implemented, got layer_module={cfg.layer_module!r}")
        if cfg.rope_scaling not in (None, {}) and (cfg.rope_scaling or {}).get("rope_type", "default") != "default":
            raise ValueError(f"rope_scaling {cfg.rope_scaling} is not supported (BAGEL uses plain RoPE)")
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

        # The two switches of issue 19 (see the module docstring); both defaults are the fast paths.
        self.attention_impl = "auto"
        self.expert_order = True

    def forward(self, x, position_ids, gen_mask, spec: AttentionSpec) -> torch.Tensor:
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        impl = resolve_attention_impl(spec.impl or self.attention_impl, x.device)
        if spec.impl != impl:
            spec = replace(spec, impl=impl)
        route = gen_mask
        if self.expert_order and gen_mask is not None:
            # Sort rows by expert once; every layer then works on two contiguous slices.
            route = ExpertOrder(gen_mask)
            x, cos, sin = (t.index_select(0, route.order) for t in (x, cos, sin))
        for layer in self.layers:
            x = layer(x, route, cos, sin, spec)
        x = _route(x, route, self.norm, self.norm_moe_gen)
        return x.index_select(0, route.inverse) if isinstance(route, ExpertOrder) else x


class Qwen2MoTForCausalLM(nn.Module):
    """`model` + `lm_head`, named as in the release (`language_model.model.*`, `language_model.lm_head`)."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.config = cfg
        self.model = Qwen2MoTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, x, position_ids, gen_mask, spec: AttentionSpec) -> torch.Tensor:
        return self.model(x, position_ids, gen_mask, spec)


def sample_attention_mask(split_lens: list[int], attn_modes: list[str], device=None) -> torch.Tensor:
    """Bool mask [L, L] of one sample made of splits (True = may attend), as BAGEL builds it.

    causal: causal inside the split, sees all earlier splits; full: bidirectional inside the split;
    noise: like full, but no later token may look at a noised split (they see its clean twin instead).
    """
    total = sum(split_lens)
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    start = 0
    for length, mode in zip(split_lens, attn_modes):
        if mode not in ("causal", "full", "noise"):
            raise ValueError(f"unknown attention mode {mode!r}")
        sl = slice(start, start + length)
        block = torch.ones(length, length, dtype=torch.bool, device=device)
        mask[sl, sl] = block.tril() if mode == "causal" else block
        mask[sl, :start] = True
        start += length
    start = 0
    for length, mode in zip(split_lens, attn_modes):
        if mode == "noise":
            sl = slice(start, start + length)
            mask[:, sl] = False
            mask[sl, sl] = True
        start += length
    return mask
