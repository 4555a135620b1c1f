"""Initial values of a concept's tokens (the paper does not state them; this is our documented choice).

- identifier: the mean input embedding of the class word's tokens ("dog"), so `<sks>` starts as
  "a dog"; its output row starts as the LM-head row of the class word's first token.
- understanding tokens: the mean of the concept's images' ViT features after the connector (what the
  understanding expert sees for this concept), plus small per-token noise so the tokens differ.
- generation tokens: the mean of `vae2llm` of the images' latent tokens (what the generation expert
  sees for this concept), plus small per-token noise.
`strategy="class_word"` fills the latent tokens from the class word too; `"random"` uses N(0, std of the
vocabulary embeddings) everywhere (the untrained-tokens baseline of the evaluation).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..model.images import to_tensor
from ..model.layers import flattened_position_ids, patchify
from ..model.tokenizer import encode_user_text
from .bank import ConceptBank
from .samples import ImageCache, encode_posterior

InitStrategy = Literal["image", "class_word", "random"]


@torch.no_grad()
def image_features(bundle, images: list[np.ndarray], vit_size: int = 64, cache: ImageCache | None = None) -> torch.Tensor:
    """Connector outputs of each image, mean-pooled: [N, D]. Also the hard-negative miner's features.

    With `cache` (e.g. a `SampleBuilder`'s), each image's features are computed once and reused.
    """
    model, cfg = bundle.model, bundle.config
    p = cfg.vit.patch_size

    def one(img):
        x = to_tensor(img, (vit_size, vit_size)).to(model.llm2vae.weight)
        tokens = patchify(x, p)
        pos = flattened_position_ids(vit_size, vit_size, p, cfg.vit_max_num_patch_per_side).to(x.device)
        return model.embed_vit(tokens, pos, [tokens.shape[0]]).mean(0)

    if cache is None:
        return torch.stack([one(img) for img in images])
    return torch.stack([cache.get("vit", img, vit_size, lambda img=img: one(img)) for img in images])


@torch.no_grad()
def latent_features(bundle, images: list[np.ndarray], vae_size: int = 64, cache: ImageCache | None = None) -> torch.Tensor:
    """`vae2llm` of each image's latent tokens (the posterior mean), mean-pooled: [N, D].

    With `cache`, the VAE posterior is the one the training latents of the same image use: the
    encoder runs once per image for both.
    """
    model, vae = bundle.model, bundle.vae
    feats = []
    for img in images:
        if cache is None:
            x = to_tensor(img, (vae_size, vae_size))[None].to(model.llm2vae.weight)
            z = vae.encode(x, sample=False)
        else:
            mean, _ = cache.get("posterior", img, vae_size, lambda img=img: encode_posterior(vae, img, vae_size))
            z = vae.config.scale_factor * (mean - vae.config.shift_factor)  # what vae.encode(x, sample=False) returns
        hw = (z.shape[2] // bundle.config.latent_patch_size, z.shape[3] // bundle.config.latent_patch_size)
        feats.append(model.vae2llm(model.patchify_latents(z, [hw])).mean(0))
    return torch.stack(feats)


@torch.no_grad()
def init_concept(
    bank: ConceptBank,
    slot: int,
    bundle,
    class_word: str,
    images: list[np.ndarray] | None = None,
    strategy: InitStrategy = "image",
    seed: int = 0,
    noise_scale: float = 0.1,
    cache: ImageCache | None = None,
    vit_size: int = 64,
    vae_size: int = 64,
) -> None:
    """Set slot `slot`'s tokens. `cache` (a `SampleBuilder.cache`) reuses image features and VAE
    posteriors computed once per image; the values are the same with or without it. Images are read
    at `vit_size` / `vae_size`, the sizes training uses (a base's position tables bound them)."""
    model, tok = bundle.model, bundle.tokenizer
    embed = model.language_model.model.embed_tokens.weight
    g = torch.Generator().manual_seed(seed)
    std = float(embed.float().std())

    def noise(n):
        return torch.randn(n, bank.hidden_size, generator=g).to(embed) * std

    # The class word is user text: special-token strings in it are ordinary tokens (never a control row).
    word_ids = encode_user_text(tok, " " + class_word.strip()) or [0]
    word = embed[word_ids].mean(0)
    if strategy == "random":
        bank.identifier[slot] = noise(1)
        bank.und_tokens[slot] = noise(bank.num_und)
        bank.gen_tokens[slot] = noise(bank.num_gen)
        bank.identifier_output[slot] = noise(1)[0]
        return
    bank.identifier[slot] = word[None]
    bank.identifier_output[slot] = model.language_model.lm_head.weight[word_ids[0]]
    if strategy == "image" and images:
        und_base = image_features(bundle, images, vit_size=vit_size, cache=cache).mean(0)
        gen_base = latent_features(bundle, images, vae_size=vae_size, cache=cache).mean(0)
    else:
        und_base = gen_base = word
    bank.und_tokens[slot] = und_base[None] + noise_scale * noise(bank.num_und)
    if bank.num_gen:
        bank.gen_tokens[slot] = gen_base[None] + noise_scale * noise(bank.num_gen)
