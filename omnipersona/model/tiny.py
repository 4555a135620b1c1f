"""A tiny BAGEL (same code path, small config) saved in the release layout, for tests and the demo.

Everything is generated locally and deterministically from a seed: config, weights, tokenizer. The
folder is a few MB.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .bagel import Bagel
from .checkpoint import load_bagel, save_bagel
from .config import BagelConfig, LLMConfig, VAEConfig, ViTConfig
from .tokenizer import build_tiny_tokenizer
from .vae import FluxVAE

# Words the demo, the generated world and the prompt templates use, so the tiny BPE has merges for them.
_CORPUS_SEED = [
    "Is <sks> in this image? Yes No. A photo of <sks>. What is the toy of <sks>?",
    "Describe the image. remove <sks> from the image. change the background to snow.",
    "a striped teal star wearing a red hat on grass, a dotted orange circle with glasses indoors",
    "What colour is the object? red orange yellow green teal blue purple pink brown black white grey",
    "shape circle square triangle star blob creature pattern plain striped dotted checkered",
    "favourite food toy home black excavator carrots lighthouse ball kite boat",
    "is a dog cat person object the its of with and in on at to from this that which",
    "Generate an image of. Rewrite the request. Question: Answer: Request:",
]


def tiny_config(
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int = 640,
    vit_hidden: int = 32,
    vit_layers: int = 2,
    image_size: int = 64,
    vit_patch: int = 8,
    max_latent_size: int = 16,
) -> BagelConfig:
    return BagelConfig(
        llm=LLMConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=4096,
            rope_theta=10000.0,
        ),
        # The release file counts one more layer than the encoder runs (BAGEL drops the last one).
        vit=ViTConfig(
            hidden_size=vit_hidden,
            intermediate_size=vit_hidden * 2,
            num_hidden_layers=vit_layers + 1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=vit_patch,
        ),
        vae=VAEConfig(resolution=image_size, ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1),
        max_latent_size=max_latent_size,
        vit_max_num_patch_per_side=image_size // vit_patch,
        model_id="omnipersona/tiny-bagel",
    )


def build_tiny_bagel(folder: str | Path, seed: int = 0, config: BagelConfig | None = None, extra_corpus=()):
    """Create (or reuse) a tiny random BAGEL checkpoint folder; returns the loaded model bundle."""
    folder = Path(folder)
    if not (folder / "ema.safetensors").exists():
        cfg = config or tiny_config()
        torch.manual_seed(seed)
        model = Bagel(cfg)
        vae = FluxVAE(cfg.vae)
        tokenizer = build_tiny_tokenizer(folder, list(_CORPUS_SEED) + list(extra_corpus), vocab_size=cfg.llm.vocab_size - 16)
        if len(tokenizer) > cfg.llm.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only {cfg.llm.vocab_size}")
        save_bagel(folder, model, vae, tokenizer)
    return load_bagel(str(folder))
