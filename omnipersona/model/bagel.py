"""BAGEL: one MoT decoder over packed text, ViT (understanding) and VAE-latent (generation) tokens.

Module and parameter names follow the public release, so `ema.safetensors` loads key for key:
`language_model.*`, `vit_model.vision_model.*`, `connector.*`, `vit_pos_embed.pos_embed`,
`time_embedder.mlp.*`, `vae2llm.*`, `llm2vae.*`, `latent_pos_embed.pos_embed`.

Two entry points:
- `forward(...)` runs a packed training batch; its keyword names are the release's training batch
  fields (see `packing.PackedBatch`), plus OmniPersona's hooks: `embeds_override` (concept-token
  embeddings written over placeholder positions) and `extra_gen_indexes` (text positions routed to
  the generation expert).
- `prefill_*` / `decode_*` methods run cached inference (text decoding, image denoising); see
  `omnipersona.model.sampling` for the loops built on them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BagelConfig
from .layers import MLPConnector, PositionEmbedding, TimestepEmbedder, flattened_position_ids, patchify
from .llm import AttentionSpec, KVCache, Qwen2MoTForCausalLM, sample_attention_mask
from .vision import SiglipVisionModel


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift: t' = s*t / (1 + (s-1)*t); s > 1 spends more steps at high noise."""
    return shift * t / (1 + (shift - 1) * t)


class Bagel(nn.Module):
    def __init__(self, config: BagelConfig):
        super().__init__()
        self.config = config
        d = config.llm.hidden_size
        self.hidden_size = d
        self.language_model = Qwen2MoTForCausalLM(config.llm)
        self.vit_model = SiglipVisionModel(config.vit)
        self.connector = MLPConnector(config.vit.hidden_size, d, config.connector_act)
        self.vit_pos_embed = PositionEmbedding(config.vit_max_num_patch_per_side, d)
        self.time_embedder = TimestepEmbedder(d)
        self.vae2llm = nn.Linear(config.patch_latent_dim, d)
        self.llm2vae = nn.Linear(d, config.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(config.max_latent_size, d)
        # Sharded training (ZeRO-3) needs every rank to call every module in the same order, even
        # when its share of the batch has no image or no text target: then run them on empty input.
        self.uniform_calls = False

    # ------------------------------------------------------------------ helpers
    @property
    def num_layers(self) -> int:
        return self.config.llm.num_hidden_layers

    def new_cache(self) -> KVCache:
        return KVCache(self.num_layers)

    def freeze(self) -> "Bagel":
        """Freeze every backbone weight: backward then computes activation grads only."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def embed_vit(self, packed_vit_tokens, packed_vit_position_ids, vit_token_seqlens) -> torch.Tensor:
        """Patches -> SigLIP -> connector -> + 2-D position table (LLM width)."""
        seqlens = [int(n) for n in torch.as_tensor(vit_token_seqlens).tolist()]
        dtype = self.vit_model.vision_model.embeddings.patch_embedding.weight.dtype
        feats = self.vit_model(packed_vit_tokens.to(dtype), packed_vit_position_ids, seqlens)
        return self.connector(feats) + self.vit_pos_embed(packed_vit_position_ids)

    def embed_latents(self, packed_latent, timesteps, packed_latent_position_ids) -> torch.Tensor:
        """Patchified latents at flow time t -> LLM width (+ timestep and 2-D position embeddings)."""
        return (
            self.vae2llm(packed_latent.to(self.vae2llm.weight.dtype))
            + self.time_embedder(timesteps)
            + self.latent_pos_embed(packed_latent_position_ids)
        )

    def patchify_latents(self, padded_latent, shapes) -> torch.Tensor:
        p, c = self.config.latent_patch_size, self.config.vae.z_channels
        out = []
        for latent, (h, w) in zip(padded_latent, shapes):
            x = latent[:, : h * p, : w * p].reshape(c, h, p, w, p)
            out.append(torch.einsum("chpwq->hwpqc", x).reshape(-1, p * p * c))
        return torch.cat(out, dim=0)

    def unpatchify_latent(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[h*w, p*p*c] -> [1, c, h*p, w*p] (inverse of `patchify_latents` for one image)."""
        p, c = self.config.latent_patch_size, self.config.vae.z_channels
        x = tokens.reshape(1, h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(1, c, h * p, w * p)

    @staticmethod
    def _gen_mask(n: int, gen_indexes, device) -> torch.Tensor:
        mask = torch.zeros(n, dtype=torch.bool, device=device)
        for idx in gen_indexes:
            if idx is not None and len(idx):
                mask[idx] = True
        return mask

    # ------------------------------------------------------------------ training
    def forward(
        self,
        sequence_length: int,
        packed_text_ids: torch.Tensor,
        packed_text_indexes: torch.Tensor,
        sample_lens: list[int],
        packed_position_ids: torch.Tensor,
        nested_attention_masks: list[torch.Tensor] | None = None,
        split_lens: list[list[int]] | None = None,
        attn_modes: list[list[str]] | None = None,
        ce_loss_indexes: torch.Tensor | None = None,
        packed_label_ids: torch.Tensor | None = None,
        packed_vit_tokens: torch.Tensor | None = None,
        packed_vit_token_indexes: torch.Tensor | None = None,
        packed_vit_position_ids: torch.Tensor | None = None,
        vit_token_seqlens: torch.Tensor | None = None,
        padded_latent: torch.Tensor | None = None,
        patchified_vae_latent_shapes: list[tuple[int, int]] | None = None,
        packed_latent_position_ids: torch.Tensor | None = None,
        packed_vae_token_indexes: torch.Tensor | None = None,
        packed_timesteps: torch.Tensor | None = None,
        mse_loss_indexes: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        embeds_override: tuple[torch.Tensor, torch.Tensor] | None = None,
        extra_gen_indexes: torch.Tensor | None = None,
        ce_logits_fn=None,
    ) -> dict[str, torch.Tensor | None]:
        """Packed forward. Returns per-token `ce` and per-element `mse` (unreduced, like the release),
        plus `ce_logits`, `mse_preds`, `mse_target` and `last_hidden_state` for inspection.

        `packed_timesteps` are logits (sigmoid -> shift gives t); `-inf` marks clean conditioning
        latents (t = 0). `noise` fixes the flow noise (else drawn). `ce_logits_fn(hidden)` replaces the
        LM head (the concept bank appends its identifiers' output rows there).
        """
        emb = self.language_model.model.embed_tokens(packed_text_ids)
        seq = emb.new_zeros((sequence_length, self.hidden_size))
        seq[packed_text_indexes] = emb
        if embeds_override is not None:
            idx, values = embeds_override
            seq = seq.index_put((idx,), values.to(seq.dtype))

        if nested_attention_masks is None:
            nested_attention_masks = [
                sample_attention_mask(s, m, seq.device) for s, m in zip(split_lens, attn_modes)
            ]
        masks = [m if m.dtype == torch.bool else m == 0 for m in nested_attention_masks]

        if packed_vit_tokens is not None and len(packed_vit_tokens):
            vit = self.embed_vit(packed_vit_tokens, packed_vit_position_ids, vit_token_seqlens)
            seq[packed_vit_token_indexes] = vit.to(seq.dtype)
        elif self.uniform_calls:
            patch_dim = self.config.vit.num_channels * self.config.vit.patch_size**2
            self.embed_vit(seq.new_zeros((1, patch_dim)), torch.zeros(1, dtype=torch.long, device=seq.device), [1])

        clean = target = None
        has_vae = packed_vae_token_indexes is not None and len(packed_vae_token_indexes) > 0
        if has_vae:
            clean = self.patchify_latents(padded_latent, patchified_vae_latent_shapes).to(seq.dtype)
            if noise is None:
                noise = torch.randn_like(clean)
            t = shift_timesteps(torch.sigmoid(packed_timesteps.to(clean.dtype)), self.config.timestep_shift)
            noise = noise.to(clean.dtype)
            noisy = (1 - t[:, None]) * clean + t[:, None] * noise
            seq[packed_vae_token_indexes] = self.embed_latents(noisy, t, packed_latent_position_ids).to(seq.dtype)
        elif self.uniform_calls:
            empty = seq.new_zeros((0, self.config.patch_latent_dim))
            self.embed_latents(empty, seq.new_zeros(0), torch.zeros(0, dtype=torch.long, device=seq.device))

        gen_mask = self._gen_mask(sequence_length, [packed_vae_token_indexes if has_vae else None, extra_gen_indexes], seq.device)
        spec = AttentionSpec(sample_lens=list(sample_lens), masks=masks)
        hidden = self.language_model(seq, packed_position_ids, gen_mask, spec)

        out: dict[str, torch.Tensor | None] = {"last_hidden_state": hidden, "mse": None, "ce": None}
        lm_logits = ce_logits_fn or self.language_model.lm_head
        if has_vae and mse_loss_indexes is not None and len(mse_loss_indexes):
            preds = self.llm2vae(hidden[mse_loss_indexes])
            target = (noise - clean)[t > 0]  # velocity from data to noise
            out.update(mse=(preds - target) ** 2, mse_preds=preds, mse_target=target)
        elif self.uniform_calls:
            out["anchor"] = self.llm2vae(hidden[:0]).sum() * 0.0
        if ce_loss_indexes is not None and len(ce_loss_indexes):
            logits = lm_logits(hidden[ce_loss_indexes])
            out.update(ce=F.cross_entropy(logits.float(), packed_label_ids, reduction="none"), ce_logits=logits)
        elif self.uniform_calls:
            out["anchor"] = out.get("anchor", 0.0) + lm_logits(hidden[:0]).sum() * 0.0
        return out

    # ------------------------------------------------------------------ cached inference
    def _run_cached(self, seq, positions, gen_mask, cache, causal: bool, update: bool) -> torch.Tensor:
        spec = AttentionSpec(cache=cache, causal=causal, update_cache=update)
        return self.language_model(seq, positions, gen_mask, spec)

    @torch.no_grad()
    def prefill_text(
        self,
        cache: KVCache,
        position: int,
        token_ids: torch.Tensor,
        embeds_override: tuple[torch.Tensor, torch.Tensor] | None = None,
        gen_indexes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Append text (already wrapped in bos/eos by the caller) causally; returns (hidden, next position).

        `embeds_override` / `gen_indexes` are positions *within this text*: concept tokens take their
        bank embeddings there, and generation tokens are routed to the generation expert.
        """
        seq = self.language_model.model.embed_tokens(token_ids)
        if embeds_override is not None:
            seq = seq.index_put((embeds_override[0],), embeds_override[1].to(seq.dtype))
        n = seq.shape[0]
        positions = torch.arange(position, position + n, device=seq.device)
        gen_mask = self._gen_mask(n, [gen_indexes], seq.device)
        hidden = self._run_cached(seq, positions, gen_mask, cache, causal=True, update=True)
        return hidden, position + n

    @torch.no_grad()
    def prefill_vit_image(self, cache: KVCache, position: int, pixels: torch.Tensor, marker_ids: tuple[int, int]) -> int:
        """Append <vision_start> ViT tokens <vision_end>, all at one rope position, full attention."""
        p = self.config.vit.patch_size
        tokens = patchify(pixels, p)
        pos_ids = flattened_position_ids(pixels.shape[1], pixels.shape[2], p, self.config.vit_max_num_patch_per_side)
        vit = self.embed_vit(tokens, pos_ids.to(pixels.device), [tokens.shape[0]])
        markers = self.language_model.model.embed_tokens(torch.tensor(marker_ids, device=pixels.device))
        seq = torch.cat([markers[:1], vit.to(markers.dtype), markers[1:]], dim=0)
        positions = torch.full((seq.shape[0],), position, device=seq.device, dtype=torch.long)
        self._run_cached(seq, positions, None, cache, causal=False, update=True)
        return position + 1

    @torch.no_grad()
    def prefill_vae_latent(self, cache: KVCache, position: int, latent: torch.Tensor, marker_ids: tuple[int, int]) -> int:
        """Append a clean latent (t = 0) as generation-expert tokens between image markers."""
        seq, gen_mask, positions = self._latent_query(latent_tokens=None, latent=latent, t=0.0, position=position, marker_ids=marker_ids)
        self._run_cached(seq, positions, gen_mask, cache, causal=False, update=True)
        return position + 1

    def _latent_query(self, latent_tokens, latent, t: float, position: int, marker_ids, hw=None):
        if latent is not None:
            latent = latent if latent.dim() == 4 else latent[None]  # [z, h, w] or [1, z, h, w]
            _, _, H, W = latent.shape
            p = self.config.latent_patch_size
            hw = (H // p, W // p)
            latent_tokens = self.patchify_latents(latent, [hw])
        h, w = hw
        pos_ids = flattened_position_ids(h, w, 1, self.config.max_latent_size).to(latent_tokens.device)
        ts = torch.full((latent_tokens.shape[0],), float(t), device=latent_tokens.device)
        lat = self.embed_latents(latent_tokens, ts, pos_ids)
        markers = self.language_model.model.embed_tokens(torch.tensor(marker_ids, device=latent_tokens.device))
        seq = torch.cat([markers[:1], lat.to(markers.dtype), markers[1:]], dim=0)
        gen_mask = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
        gen_mask[1:-1] = True
        positions = torch.full((seq.shape[0],), position, device=seq.device, dtype=torch.long)
        return seq, gen_mask, positions

    @torch.no_grad()
    def predict_velocity(self, cache: KVCache, position: int, x_t: torch.Tensor, t: float, hw, marker_ids) -> torch.Tensor:
        """Velocity for noised latent tokens x_t [h*w, p*p*c] at time t, attending to the cache (not growing it)."""
        seq, gen_mask, positions = self._latent_query(x_t, None, t, position, marker_ids, hw=hw)
        hidden = self._run_cached(seq, positions, gen_mask, cache, causal=False, update=False)
        return self.llm2vae(hidden[1:-1])

