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
    # Every `*_batch` method serves rows: independent sequences, each with its own KV cache and rope
    # position. The rows' new tokens are packed into one stream and run as ONE forward, each row's
    # tokens attending to its own cache only (`AttentionSpec.caches`). The single-row methods are
    # the same computation for one row.
    def _run_cached(self, seq, positions, gen_mask, lens: list[int], caches: list[KVCache], causal: bool, update: bool) -> torch.Tensor:
        if update and len({id(c) for c in caches}) < len(caches):
            raise ValueError("rows that append to their caches need one cache each")
        spec = AttentionSpec(sample_lens=list(lens), caches=list(caches), causal=causal, update_cache=update)
        return self.language_model(seq, positions, gen_mask, spec)

    @staticmethod
    def _rope_runs(positions: list[int], lens: list[int], device, same: bool) -> torch.Tensor:
        """Rope ids of packed rows: consecutive from each row's position (text), or one shared id (images)."""
        runs = [torch.full((n,), p, dtype=torch.long) if same else torch.arange(p, p + n) for p, n in zip(positions, lens)]
        return torch.cat(runs).to(device)

    def _between_markers(self, parts: list[torch.Tensor], marker_ids) -> tuple[torch.Tensor, list[int]]:
        """`<start> part <end>` for every row, packed; returns (embeddings, row lengths)."""
        markers = self.language_model.model.embed_tokens(torch.tensor(marker_ids, device=parts[0].device))
        seq = torch.cat([x for part in parts for x in (markers[:1], part.to(markers.dtype), markers[1:])], dim=0)
        return seq, [part.shape[0] + 2 for part in parts]

    @torch.no_grad()
    def prefill_text_batch(
        self,
        caches: list[KVCache],
        positions: list[int],
        token_ids: torch.Tensor,
        lens: list[int],
        embeds_override: tuple[torch.Tensor, torch.Tensor] | None = None,
        gen_indexes: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], list[int]]:
        """Append text causally to every row: `token_ids` holds row after row (`lens` tokens each,
        already wrapped in bos/eos by the caller). Returns (hidden per row, next position per row).

        `embeds_override` / `gen_indexes` are positions *within the packed ids*: concept tokens take
        their bank embeddings there, and generation tokens are routed to the generation expert.
        """
        seq = self.language_model.model.embed_tokens(token_ids)
        if embeds_override is not None:
            seq = seq.index_put((embeds_override[0],), embeds_override[1].to(seq.dtype))
        rope = self._rope_runs(positions, lens, seq.device, same=False)
        gen_mask = self._gen_mask(seq.shape[0], [gen_indexes], seq.device)
        hidden = self._run_cached(seq, rope, gen_mask, lens, caches, causal=True, update=True)
        return list(hidden.split(list(lens))), [p + n for p, n in zip(positions, lens)]

    @torch.no_grad()
    def prefill_vit_image_batch(self, caches: list[KVCache], positions: list[int], pixels: list[torch.Tensor], marker_ids) -> list[int]:
        """Append <vision_start> ViT tokens <vision_end> to every row (one image each), all at one
        rope position, full attention; the ViT encodes all images in one call."""
        p = self.config.vit.patch_size
        tokens = [patchify(px, p) for px in pixels]
        ids = [flattened_position_ids(px.shape[1], px.shape[2], p, self.config.vit_max_num_patch_per_side).to(px.device) for px in pixels]
        counts = [t.shape[0] for t in tokens]
        vit = self.embed_vit(torch.cat(tokens), torch.cat(ids), counts)
        seq, lens = self._between_markers(list(vit.split(counts)), marker_ids)
        self._run_cached(seq, self._rope_runs(positions, lens, seq.device, same=True), None, lens, caches, causal=False, update=True)
        return [q + 1 for q in positions]

    def _latent_rows(self, latent_tokens: list[torch.Tensor], t: float, positions: list[int], hws, marker_ids):
        """(embeddings, rope ids, gen mask, row lengths) of `<start> latent tokens at time t <end>` per row."""
        device = latent_tokens[0].device
        pos_ids = torch.cat([flattened_position_ids(h, w, 1, self.config.max_latent_size) for h, w in hws]).to(device)
        tokens = torch.cat(latent_tokens)
        lat = self.embed_latents(tokens, torch.full((tokens.shape[0],), float(t), device=device), pos_ids)
        seq, lens = self._between_markers(list(lat.split([x.shape[0] for x in latent_tokens])), marker_ids)
        gen_mask = torch.ones(seq.shape[0], dtype=torch.bool, device=device)
        ends = torch.tensor(lens, device=device).cumsum(0)
        gen_mask[ends - 1] = False
        gen_mask[ends - torch.tensor(lens, device=device)] = False
        return seq, self._rope_runs(positions, lens, device, same=True), gen_mask, lens

    @torch.no_grad()
    def prefill_vae_latent_batch(self, caches: list[KVCache], positions: list[int], latents: list[torch.Tensor], marker_ids) -> list[int]:
        """Append a clean latent (t = 0) to every row as generation-expert tokens between image markers."""
        p = self.config.latent_patch_size
        latents = [z if z.dim() == 4 else z[None] for z in latents]  # [z, h, w] or [1, z, h, w]
        hws = [(z.shape[2] // p, z.shape[3] // p) for z in latents]
        tokens = [self.patchify_latents(z, [hw]) for z, hw in zip(latents, hws)]
        seq, rope, gen_mask, lens = self._latent_rows(tokens, 0.0, positions, hws, marker_ids)
        self._run_cached(seq, rope, gen_mask, lens, caches, causal=False, update=True)
        return [q + 1 for q in positions]

    @torch.no_grad()
    def predict_velocity_batch(self, caches: list[KVCache], positions: list[int], xs: list[torch.Tensor], t: float, hws, marker_ids) -> list[torch.Tensor]:
        """Velocity of every row's noised latent tokens x_t [h*w, p*p*c] at time t, each attending to
        its own cache (caches are read, never grown, so rows may share one)."""
        seq, rope, gen_mask, lens = self._latent_rows(list(xs), t, positions, hws, marker_ids)
        hidden = self._run_cached(seq, rope, gen_mask, lens, caches, causal=False, update=False)
        return list(self.llm2vae(hidden[gen_mask]).split([x.shape[0] for x in xs]))

    # One row each: what the samplers' single-request functions call.
    def prefill_text(self, cache: KVCache, position: int, token_ids: torch.Tensor, embeds_override=None, gen_indexes=None):
        """Append text to one cache; returns (hidden, next position)."""
        hidden, (position,) = self.prefill_text_batch([cache], [position], token_ids, [token_ids.shape[0]], embeds_override, gen_indexes)
        return hidden[0], position

    def prefill_vit_image(self, cache: KVCache, position: int, pixels: torch.Tensor, marker_ids: tuple[int, int]) -> int:
        return self.prefill_vit_image_batch([cache], [position], [pixels], marker_ids)[0]

    def prefill_vae_latent(self, cache: KVCache, position: int, latent: torch.Tensor, marker_ids: tuple[int, int]) -> int:
        return self.prefill_vae_latent_batch([cache], [position], [latent], marker_ids)[0]

    def predict_velocity(self, cache: KVCache, position: int, x_t: torch.Tensor, t: float, hw, marker_ids) -> torch.Tensor:
        return self.predict_velocity_batch([cache], [position], [x_t], t, [hw], marker_ids)[0]
