"""Pack several samples into one token stream, the way BAGEL's training data loader does.

A sample is a list of items: text spans, ViT images (understanding input) and VAE latents (clean
conditioning or noised targets). Each text span becomes `<|im_start|> ids... <|im_end|>`; each image
becomes `<|vision_start|> tokens... <|vision_end|>` sharing one rope position. Attention: causal for
text, full inside an image, and a noised latent is hidden from everything after it.

Virtual tokens: ids >= `vocab_size` are not in the vocabulary; they index rows of an external
embedding table supplied at forward time (OmniPersona's concept bank). Rows >= `virtual_gen_start`
are routed to the generation expert although they sit at text positions. A virtual id may also be a
label (the model's logits are extended by the caller to cover it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .layers import flattened_position_ids, patchify


@dataclass
class Text:
    ids: list[int]
    loss: bool = False


@dataclass
class VitImage:
    pixels: torch.Tensor  # [3, H, W] in [-1, 1], H and W multiples of the ViT patch


@dataclass
class VaeLatent:
    latent: torch.Tensor  # [z, h, w] scaled VAE latent, h and w multiples of the latent patch
    loss: bool = True  # True: noised target with MSE; False: clean conditioning (t = 0)
    timestep_logit: float | None = None  # fixed t logit (tests); default drawn from N(0, 1)


@dataclass
class PackedBatch:
    """Field names are those of the release's training batch (and `Bagel.forward` kwargs)."""

    sequence_length: int
    sample_lens: list[int]
    packed_text_ids: torch.Tensor
    packed_text_indexes: torch.Tensor
    packed_position_ids: torch.Tensor
    split_lens: list[list[int]]
    attn_modes: list[list[str]]
    ce_loss_indexes: torch.Tensor
    packed_label_ids: torch.Tensor
    ce_sample_ids: torch.Tensor  # which sample each CE target belongs to (per-concept losses)
    packed_vit_tokens: torch.Tensor | None = None
    packed_vit_token_indexes: torch.Tensor | None = None
    packed_vit_position_ids: torch.Tensor | None = None
    vit_token_seqlens: torch.Tensor | None = None
    padded_latent: torch.Tensor | None = None
    patchified_vae_latent_shapes: list[tuple[int, int]] = field(default_factory=list)
    packed_latent_position_ids: torch.Tensor | None = None
    packed_vae_token_indexes: torch.Tensor | None = None
    packed_timesteps: torch.Tensor | None = None
    mse_loss_indexes: torch.Tensor | None = None
    mse_sample_ids: torch.Tensor | None = None  # sample of each MSE row
    virtual_indexes: torch.Tensor | None = None  # positions holding virtual tokens
    virtual_rows: torch.Tensor | None = None  # their rows in the external table
    extra_gen_indexes: torch.Tensor | None = None  # virtual positions routed to the gen expert

    def model_inputs(self) -> dict:
        """Keyword arguments for `Bagel.forward` (without the embedding override)."""
        skip = {"ce_sample_ids", "mse_sample_ids", "virtual_indexes", "virtual_rows"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def _t(values, dtype=torch.long):
    return torch.tensor(values, dtype=dtype)


def pack(
    samples: list[list[Text | VitImage | VaeLatent]],
    *,
    bos: int,
    eos: int,
    start_of_image: int,
    end_of_image: int,
    vocab_size: int,
    vit_patch: int,
    vit_max_per_side: int,
    latent_patch: int,
    max_latent_size: int,
    virtual_gen_start: int | None = None,
    generator: torch.Generator | None = None,
) -> PackedBatch:
    text_ids, text_idx, pos_ids, labels, ce_idx, ce_sample = [], [], [], [], [], []
    vit_tokens, vit_idx, vit_pos, vit_lens = [], [], [], []
    latents, latent_shapes, latent_pos, vae_idx, timesteps, mse_idx, mse_sample = [], [], [], [], [], [], []
    virt_idx, virt_rows, gen_idx = [], [], []
    sample_lens, all_splits, all_modes = [], [], []
    curr = 0

    def put_text(token: int, position: int):
        nonlocal curr
        if token >= vocab_size:
            row = token - vocab_size
            virt_idx.append(curr)
            virt_rows.append(row)
            if virtual_gen_start is not None and row >= virtual_gen_start:
                gen_idx.append(curr)
            token = 0  # placeholder id; its embedding is overwritten
        text_ids.append(token)
        text_idx.append(curr)
        pos_ids.append(position)
        curr += 1

    for s, items in enumerate(samples):
        start, rope, splits, modes = curr, 0, [], []
        for item in items:
            if isinstance(item, Text):
                seq = [bos] + list(item.ids)
                for i, tok in enumerate(seq):
                    if item.loss:
                        ce_idx.append(curr)
                        labels.append(seq[i + 1] if i + 1 < len(seq) else eos)
                        ce_sample.append(s)
                    put_text(tok, rope + i)
                put_text(eos, rope + len(seq))
                splits.append(len(seq) + 1)
                modes.append("causal")
                rope += len(seq) + 1
            elif isinstance(item, VitImage):
                put_text(start_of_image, rope)
                toks = patchify(item.pixels, vit_patch)
                n = toks.shape[0]
                vit_tokens.append(toks)
                vit_pos.append(flattened_position_ids(item.pixels.shape[1], item.pixels.shape[2], vit_patch, vit_max_per_side))
                vit_lens.append(n)
                vit_idx.extend(range(curr, curr + n))
                pos_ids.extend([rope] * n)
                curr += n
                put_text(end_of_image, rope)
                splits.append(n + 2)
                modes.append("full")
                rope += 1
            elif isinstance(item, VaeLatent):
                put_text(start_of_image, rope)
                z, h, w = item.latent.shape
                gh, gw = h // latent_patch, w // latent_patch
                n = gh * gw
                latents.append(item.latent)
                latent_shapes.append((gh, gw))
                latent_pos.append(flattened_position_ids(gh, gw, 1, max_latent_size))
                vae_idx.extend(range(curr, curr + n))
                if item.loss:
                    logit = item.timestep_logit
                    if logit is None:
                        logit = float(torch.randn((), generator=generator))
                    mse_idx.extend(range(curr, curr + n))
                    mse_sample.extend([s] * n)
                else:
                    logit = float("-inf")  # sigmoid(-inf) = 0: a clean latent
                timesteps.extend([logit] * n)
                pos_ids.extend([rope] * n)
                curr += n
                put_text(end_of_image, rope)
                splits.append(n + 2)
                modes.append("noise" if item.loss else "full")
                # A noised target shares its rope slot with what follows; a clean one advances it.
                rope += 0 if item.loss else 1
            else:
                raise TypeError(f"unknown item {type(item).__name__}")
        sample_lens.append(curr - start)
        all_splits.append(splits)
        all_modes.append(modes)

    batch = PackedBatch(
        sequence_length=curr,
        sample_lens=sample_lens,
        packed_text_ids=_t(text_ids),
        packed_text_indexes=_t(text_idx),
        packed_position_ids=_t(pos_ids),
        split_lens=all_splits,
        attn_modes=all_modes,
        ce_loss_indexes=_t(ce_idx),
        packed_label_ids=_t(labels),
        ce_sample_ids=_t(ce_sample),
    )
    if vit_tokens:
        batch.packed_vit_tokens = torch.cat(vit_tokens)
        batch.packed_vit_token_indexes = _t(vit_idx)
        batch.packed_vit_position_ids = torch.cat(vit_pos)
        batch.vit_token_seqlens = _t(vit_lens, torch.int32)
    if latents:
        zc = latents[0].shape[0]
        hmax = max(l.shape[1] for l in latents)
        wmax = max(l.shape[2] for l in latents)
        padded = latents[0].new_zeros((len(latents), zc, hmax, wmax))
        for i, l in enumerate(latents):
            padded[i, :, : l.shape[1], : l.shape[2]] = l
        batch.padded_latent = padded
        batch.patchified_vae_latent_shapes = latent_shapes
        batch.packed_latent_position_ids = torch.cat(latent_pos)
        batch.packed_vae_token_indexes = _t(vae_idx)
        batch.packed_timesteps = _t(timesteps, torch.float32)
        batch.mse_loss_indexes = _t(mse_idx)
        batch.mse_sample_ids = _t(mse_sample)
    if virt_idx:
        batch.virtual_indexes = _t(virt_idx)
        batch.virtual_rows = _t(virt_rows)
        batch.extra_gen_indexes = _t(gen_idx)
    return batch


def pack_for(config, special, samples: list[list[Text | VitImage | VaeLatent]], **kwargs) -> PackedBatch:
    """`pack` with a model's sizes (a `BagelConfig`) and marker tokens (`SpecialTokens`) filled in."""
    return pack(
        samples,
        bos=special.bos,
        eos=special.eos,
        start_of_image=special.start_of_image,
        end_of_image=special.end_of_image,
        vocab_size=config.llm.vocab_size,
        vit_patch=config.vit.patch_size,
        vit_max_per_side=config.vit_max_num_patch_per_side,
        latent_patch=config.latent_patch_size,
        max_latent_size=config.max_latent_size,
        **kwargs,
    )
