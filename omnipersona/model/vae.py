"""The FLUX autoencoder (16 latent channels, 8x down) as diffusers' AutoencoderKL.

`ae.safetensors` in the release uses Black Forest Labs' key names (`encoder.down.0.block.0.conv1`,
`mid.attn_1.q` as 1x1 convs); diffusers names the same weights differently and stores attention as
linears. `bfl_to_diffusers` / `diffusers_to_bfl` translate both ways so we read and write the release
file unchanged. Latent scaling follows BAGEL: z = scale * (z_raw - shift); decode inverts it.
"""
from __future__ import annotations

import re

import torch
from diffusers import AutoencoderKL
from torch import nn

from .config import VAEConfig

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_BACK = {v: k for k, v in _ATTN.items()}


def _resnet_part(name: str) -> str:
    return "conv_shortcut" if name == "nin_shortcut" else name


def bfl_to_diffusers(sd: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        new = key
        if m := re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
            new = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_resnet_part(m[3])}.{m[4]}"
        elif m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key):
            new = f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
            new = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.{_resnet_part(m[3])}.{m[4]}"
        elif m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key):
            new = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)", key):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_resnet_part(m[3])}.{m[4]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)", key):
            new = f"{m[1]}.mid_block.attentions.0.{_ATTN[m[2]]}.{m[3]}"
            if m[2] != "norm" and m[3] == "weight":
                value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv -> linear
        elif m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key):
            new = f"{m[1]}.conv_norm_out.{m[2]}"
        out[new] = value
    return out


def diffusers_to_bfl(sd: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        new = key
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key):
            part = "nin_shortcut" if m[3] == "conv_shortcut" else m[3]
            new = f"encoder.down.{m[1]}.block.{m[2]}.{part}.{m[4]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key):
            part = "nin_shortcut" if m[3] == "conv_shortcut" else m[3]
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{part}.{m[4]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)\.(weight|bias)", key):
            part = "nin_shortcut" if m[3] == "conv_shortcut" else m[3]
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{part}.{m[4]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{_ATTN_BACK[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value.reshape(value.shape[0], value.shape[1], 1, 1)
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        out[new] = value
    return out


def infer_vae_config(bfl_sd: dict[str, torch.Tensor], base: VAEConfig | None = None) -> VAEConfig:
    """Read the autoencoder's sizes off its BFL-format weights (the release hard-codes them)."""
    base = base or VAEConfig()
    ch = bfl_sd["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(k.split(".")[2]) for k in bfl_sd if k.startswith("encoder.down.")})
    ch_mult = [bfl_sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels]
    blocks = {int(k.split(".")[4]) for k in bfl_sd if k.startswith("encoder.down.0.block.")}
    z_channels = bfl_sd["encoder.conv_out.weight"].shape[0] // 2
    return base.model_copy(
        update=dict(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=len(blocks),
            z_channels=z_channels,
            in_channels=bfl_sd["encoder.conv_in.weight"].shape[1],
            out_ch=bfl_sd["decoder.conv_out.weight"].shape[0],
            downsample=2 ** (len(ch_mult) - 1),
        )
    )


class FluxVAE(nn.Module):
    """AutoencoderKL configured like FLUX's AE, with BAGEL's latent scaling."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        levels = len(cfg.ch_mult)
        self.ae = AutoencoderKL(
            in_channels=cfg.in_channels,
            out_channels=cfg.out_ch,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
            layers_per_block=cfg.num_res_blocks,
            latent_channels=cfg.z_channels,
            norm_num_groups=32,
            sample_size=cfg.resolution,
            scaling_factor=cfg.scale_factor,
            shift_factor=cfg.shift_factor,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=True,
        )

    def encode(self, images: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        """images in [-1, 1], [B, 3, H, W] -> scaled latents [B, z, H/8, W/8]."""
        dist = self.ae.encode(images).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return self.config.scale_factor * (z - self.config.shift_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.config.scale_factor + self.config.shift_factor
        return self.ae.decode(z).sample

    def load_bfl_state_dict(self, sd: dict[str, torch.Tensor], strict: bool = True):
        return self.ae.load_state_dict(bfl_to_diffusers(sd, len(self.config.ch_mult)), strict=strict)

    def bfl_state_dict(self) -> dict[str, torch.Tensor]:
        return diffusers_to_bfl(self.ae.state_dict(), len(self.config.ch_mult))
