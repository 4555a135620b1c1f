"""The FLUX autoencoder (16 latent channels, 8x down) as diffusers' AutoencoderKL.

`ae.safetensors` in the release uses Black Forest Labs' key names (`encoder.down.0.block.0.conv1`,
`mid.attn_1.q` as 1x1 convs); diffusers names the same weights differently and stores attention as
linears. `bfl_to_diffusers` / `diffusers_to_bfl` translate both ways so we read and write the release
file unchanged. Latent scaling follows BAGEL: z = scale * (z_raw - shift); decode inverts it.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import AutoencoderKL
from torch import nn

from .config import VAEConfig

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_BACK = {v: k for k, v in _ATTN.items()}


def _same(value: str, levels: int) -> str:
    return value


def _flip(level: str, levels: int) -> str:
    return str(levels - 1 - int(level))


def _shortcut(old: str, new: str) -> Callable[[str, int], str]:
    return lambda part, _: new if part == old else part


@dataclass(frozen=True)
class _Field:
    """A `{name}` of `_KEYS`: what it matches on each side and how its value translates."""

    bfl: str
    diffusers: str
    to_diffusers: Callable[[str, int], str] = _same
    to_bfl: Callable[[str, int], str] = _same


_FIELDS = {
    "i": _Field(r"\d+", r"\d+"),
    "j": _Field(r"\d+", r"\d+"),
    "level": _Field(r"\d+", r"\d+", _flip, _flip),  # diffusers numbers decoder levels from the other end
    "mid": _Field("[12]", r"\d", lambda v, _: str(int(v) - 1), lambda v, _: str(int(v) + 1)),
    "resnet": _Field(r"\w+", r"\w+", _shortcut("nin_shortcut", "conv_shortcut"), _shortcut("conv_shortcut", "nin_shortcut")),
    "attn": _Field(r"\w+", "|".join(map(re.escape, _ATTN_BACK)), lambda v, _: _ATTN[v], lambda v, _: _ATTN_BACK[v]),
    "coder": _Field("encoder|decoder", "encoder|decoder"),
    "p": _Field("weight|bias", "weight|bias"),
}

# (BFL key, diffusers key) of every weight the two name differently; one table serves both directions.
_KEYS = (
    ("encoder.down.{i}.block.{j}.{resnet}.{p}", "encoder.down_blocks.{i}.resnets.{j}.{resnet}.{p}"),
    ("encoder.down.{i}.downsample.conv.{p}", "encoder.down_blocks.{i}.downsamplers.0.conv.{p}"),
    ("decoder.up.{level}.block.{j}.{resnet}.{p}", "decoder.up_blocks.{level}.resnets.{j}.{resnet}.{p}"),
    ("decoder.up.{level}.upsample.conv.{p}", "decoder.up_blocks.{level}.upsamplers.0.conv.{p}"),
    ("{coder}.mid.block_{mid}.{resnet}.{p}", "{coder}.mid_block.resnets.{mid}.{resnet}.{p}"),
    ("{coder}.mid.attn_1.{attn}.{p}", "{coder}.mid_block.attentions.0.{attn}.{p}"),
    ("{coder}.norm_out.{p}", "{coder}.conv_norm_out.{p}"),
)


def _pattern(template: str, side: str) -> re.Pattern[str]:
    regex = ""
    for literal, name, _, _ in string.Formatter().parse(template):
        regex += re.escape(literal)
        if name:
            regex += f"(?P<{name}>{getattr(_FIELDS[name], side)})"
    return re.compile(regex)


_PATTERNS = {side: [_pattern(pair[k], side) for pair in _KEYS] for k, side in enumerate(("bfl", "diffusers"))}


def _rename(sd: dict[str, torch.Tensor], num_levels: int, to_diffusers: bool) -> dict[str, torch.Tensor]:
    source, target = ("bfl", 1) if to_diffusers else ("diffusers", 0)
    out = {}
    for key, value in sd.items():
        new = key
        for pair, pattern in zip(_KEYS, _PATTERNS[source]):
            if m := pattern.fullmatch(key):
                fields = m.groupdict()
                translate = {n: _FIELDS[n].to_diffusers if to_diffusers else _FIELDS[n].to_bfl for n in fields}
                new = pair[target].format(**{n: translate[n](v, num_levels) for n, v in fields.items()})
                if fields.get("attn") not in (None, "norm", "group_norm") and fields["p"] == "weight":
                    # BFL's attention projections are 1x1 convs, diffusers' are linears.
                    value = value.reshape(value.shape[:2] if to_diffusers else (*value.shape[:2], 1, 1))
                break
        out[new] = value
    return out


def bfl_to_diffusers(sd: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    return _rename(sd, num_levels, to_diffusers=True)


def diffusers_to_bfl(sd: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    return _rename(sd, num_levels, to_diffusers=False)


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
