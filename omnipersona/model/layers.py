"""Small building blocks shared by the decoder and the Bagel wrapper (names follow the release)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from transformers.activations import ACT2FN


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm: normalise in fp32, cast back, then scale."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SwiGLU(nn.Module):
    """Qwen2 MLP: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden: int, intermediate: int, act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class RotaryEmbedding(nn.Module):
    """Default (unscaled) RoPE over integer position ids; cos/sin computed in fp32."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.float()[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos/sin: [tokens, head_dim]."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


class TimestepEmbedder(nn.Module):
    """DiT sinusoidal timestep embedding (t in [0, 1], cos first) followed by an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.sinusoidal(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class MLPConnector(nn.Module):
    """ViT features -> LLM width: fc2(act(fc1(x)))."""

    def __init__(self, in_dim: int, out_dim: int, act: str):
        super().__init__()
        self.activation_fn = ACT2FN[act]
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


def sincos_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos table [grid*grid, dim]: first half encodes the row, second the column."""
    assert embed_dim % 4 == 0, "2-D sin-cos embedding needs a hidden size divisible by 4"

    def one_axis(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # meshgrid(w, h)[0] varies along w: the release encodes grid[0] (w-major) first.
    gw, gh = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    return np.concatenate([one_axis(embed_dim // 2, gw), one_axis(embed_dim // 2, gh)], axis=1)


class PositionEmbedding(nn.Module):
    """Frozen 2-D sin-cos table indexed by flattened (row * max_side + col) ids; saved as a parameter."""

    def __init__(self, max_num_patch_per_side: int, hidden_size: int):
        super().__init__()
        self.max_num_patch_per_side = max_num_patch_per_side
        table = torch.from_numpy(sincos_2d(hidden_size, max_num_patch_per_side)).float()
        self.pos_embed = nn.Parameter(table, requires_grad=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


def flattened_position_ids(height: int, width: int, patch: int, max_per_side: int) -> torch.Tensor:
    """Row-major patch ids on a fixed max_per_side grid (the release's 'extrapolate' scheme)."""
    rows = torch.arange(height // patch)
    cols = torch.arange(width // patch)
    return (rows[:, None] * max_per_side + cols).flatten()


def patchify(image: torch.Tensor, patch: int) -> torch.Tensor:
    """[C, H, W] -> [(H/p)*(W/p), p*p*C] in (row, col, py, px, c) order, as the release packs pixels."""
    c, h, w = image.shape
    x = image.reshape(c, h // patch, patch, w // patch, patch)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, patch * patch * c)
