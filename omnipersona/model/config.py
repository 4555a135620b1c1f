"""Configs of the BAGEL architecture, read from and written to the public release's files.

The release ships `llm_config.json` (a Qwen2 config) and `vit_config.json` (a SigLIP vision config);
the VAE and the Bagel-level settings are hard-coded in BAGEL's loading code. We read the same files,
keep every unknown field (so a round trip writes them back), and derive the Bagel-level sizes from the
checkpoint's tensor shapes when the optional `bagel_config.json` (our addition, for non-default tiny
models) is absent.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _ReleaseConfig(BaseModel):
    # Release config files carry many fields we don't use (architectures, torch_dtype, ...): keep them.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    @classmethod
    def from_json_file(cls, path: str | Path):
        return cls.model_validate(json.loads(Path(path).read_text()))

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


class LLMConfig(_ReleaseConfig):
    """Qwen2 decoder; BAGEL-7B-MoT: 28 layers, hidden 3584, 28/4 heads, MLP 18944, vocab 152064."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = Field(4, description="grouped-query attention: each KV head serves "
                                     "num_attention_heads / num_key_value_heads query heads")
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None
    # BAGEL's loader forces these three regardless of the file: QK-norm on, untied head, MoT layers.
    qk_norm: bool = True
    tie_word_embeddings: bool = False
    layer_module: str = "Qwen2MoTDecoderLayer"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class ViTConfig(_ReleaseConfig):
    """SigLIP so400m/14 as BAGEL uses it.

    `num_hidden_layers` is the value in the release file; BAGEL drops the last layer (uses the
    penultimate features), so the encoder runs `num_hidden_layers - 1` layers — `num_layers_used`.
    """

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = Field(27, description="as the release file counts them: the encoder runs num_layers_used")
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 980
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @property
    def num_layers_used(self) -> int:
        return self.num_hidden_layers - 1

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VAEConfig(_ReleaseConfig):
    """FLUX autoencoder parameters (BAGEL hard-codes these for ae.safetensors)."""

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: list[int] = Field(default_factory=lambda: [1, 2, 4, 4])  # channels per level, times `ch`
    num_res_blocks: int = 2
    z_channels: int = 16
    out_ch: int = 3
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along a side: every level after the first halves the picture."""
        return 2 ** (len(self.ch_mult) - 1)


class BagelConfig(_ReleaseConfig):
    """The whole model. Defaults are the values BAGEL-7B-MoT's inference code uses."""

    llm: LLMConfig = Field(default_factory=LLMConfig)
    vit: ViTConfig = Field(default_factory=ViTConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    latent_patch_size: int = 2
    max_latent_size: int = 64
    vit_max_num_patch_per_side: int = 70
    connector_act: str = "gelu_pytorch_tanh"
    interpolate_pos: bool = False
    timestep_shift: float = 1.0
    model_id: str = "ByteDance-Seed/BAGEL-7B-MoT"

    @property
    def latent_downsample(self) -> int:
        return self.vae.downsample * self.latent_patch_size

    @property
    def patch_latent_dim(self) -> int:
        return self.latent_patch_size**2 * self.vae.z_channels

    def bagel_fields(self) -> dict[str, Any]:
        """The Bagel-level settings (what `bagel_config.json` holds)."""
        return self.model_dump(mode="json", exclude={"llm", "vit", "vae"})
