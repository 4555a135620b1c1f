"""SigLIP vision encoder as BAGEL uses it: NaViT packing of native-aspect images.

Images arrive already patchified and packed: `[total_patches, p*p*C]` plus each image's patch count.
The patch embedding is a Linear over flattened patches (BAGEL converts SigLIP's conv to a linear before
saving), positions are a learned table indexed by flattened (row * max_side + col) ids, and attention
never crosses images. The transformer blocks are transformers' own SigLIP encoder layers, so key names
and numerics match the release (`vit_model.vision_model.encoder.layers.N.self_attn.q_proj`, ...).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from .config import ViTConfig


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_embedding = nn.Linear(cfg.num_channels * cfg.patch_size**2, cfg.hidden_size, bias=True)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, packed_pixels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(packed_pixels) + self.position_embedding(position_ids)


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        hf_cfg = SiglipVisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers_used,
            num_attention_heads=cfg.num_attention_heads,
            num_channels=cfg.num_channels,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_act=cfg.hidden_act,
            layer_norm_eps=cfg.layer_norm_eps,
        )
        hf_cfg._attn_implementation = "sdpa"
        self.embeddings = SiglipVisionEmbeddings(cfg)
        self.encoder = SiglipEncoder(hf_cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, packed_pixels, position_ids, seqlens: list[int]) -> torch.Tensor:
        hidden = self.embeddings(packed_pixels, position_ids)
        out = torch.empty_like(hidden)
        # Images of equal patch count run as one batch (no mask needed); attention never crosses images.
        starts = torch.tensor([0] + list(seqlens)).cumsum(0).tolist()
        by_len: dict[int, list[int]] = {}
        for i, n in enumerate(seqlens):
            by_len.setdefault(int(n), []).append(i)
        for n, members in by_len.items():
            batch = torch.stack([hidden[starts[i] : starts[i] + n] for i in members])
            encoded = self.encoder(inputs_embeds=batch).last_hidden_state
            for row, i in enumerate(members):
                out[starts[i] : starts[i] + n] = encoded[row]
        return self.post_layernorm(out)


class SiglipVisionModel(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        self.vision_model = SiglipVisionTransformer(cfg)

    def forward(self, packed_pixels, position_ids, seqlens: list[int]) -> torch.Tensor:
        return self.vision_model(packed_pixels, position_ids, seqlens)
