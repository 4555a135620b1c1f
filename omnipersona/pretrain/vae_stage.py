"""Stage 1: train the autoencoder on world images, so latents decode back to pictures.

Loss: L1 + MSE reconstruction, a small KL to the unit prior, and a moment penalty that keeps the
*scaled* latents (BAGEL's `scale * (raw - shift)`, with FLUX's constants which the release layout
hard-codes) near zero mean and unit variance per channel — the range rectified flow starts from.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..model.images import to_tensor
from ..model.vae import FluxVAE
from ..world import render, render_background
from ..world.attributes import BACKGROUNDS, random_spec
from ..world.items import ITEM_CATEGORIES, random_item
from .steps import log_progress, optimizer_step


def world_image(seed: int, index: int, size: int):
    """A random world picture: an object (sometimes with an item), or an empty scene."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 15485863, index]))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    scene_seed = int(rng.integers(2**31 - 1))
    if rng.random() < 0.1:
        return render_background(background, size, scene_seed)
    item = random_item(rng, ITEM_CATEGORIES[int(rng.integers(3))]) if rng.random() < 0.35 else None
    return render(random_spec(rng, background=background), size, scene_seed, item=item)


def _crops(x: torch.Tensor, crop: int, grid: int, g: torch.Generator) -> torch.Tensor:
    """Random crop x crop windows on a `grid`-aligned lattice (keeps the latent grid aligned)."""
    n, _, h, w = x.shape
    ys = torch.randint(0, (h - crop) // grid + 1, (n,), generator=g) * grid
    xs = torch.randint(0, (w - crop) // grid + 1, (n,), generator=g) * grid
    return torch.stack([x[i, :, ys[i] : ys[i] + crop, xs[i] : xs[i] + crop] for i in range(n)])


def train_vae(
    vae: FluxVAE, *, steps: int, batch_size: int, lr: float, size: int, seed: int,
    crop_steps: int = 0, crop: int = 16, log=print,
) -> list[float]:
    """`crop_steps` first steps train on `crop`-pixel windows (4x cheaper at half size; the
    autoencoder is convolutional), then `steps` on whole images."""
    vae.train()
    total = crop_steps + steps
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total)))))
    )
    g = torch.Generator().manual_seed(seed)
    scale, shift = vae.config.scale_factor, vae.config.shift_factor
    losses, start = [], time.time()
    grid = vae.config.downsample
    for step in range(total):
        cropped = step < crop_steps
        n = batch_size * 2 if cropped else batch_size
        x = torch.stack([to_tensor(world_image(seed, step * 2 * batch_size + i, size)) for i in range(n)])
        if cropped:
            x = _crops(x, crop, grid, g)
        dist = vae.ae.encode(x).latent_dist
        raw = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        recon = vae.ae.decode(raw).sample
        scaled_mean = scale * (dist.mean - shift)
        scaled_var = (scale * dist.std) ** 2
        kl = 0.5 * (scaled_mean**2 + scaled_var - 1 - scaled_var.log()).mean()
        scaled = scale * (raw - shift)
        moments = (scaled.mean(dim=(0, 2, 3)) ** 2).mean() + ((scaled.std(dim=(0, 2, 3)) - 1) ** 2).mean()
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + 1e-4 * kl + 0.1 * moments
        losses.append(optimizer_step(loss, vae.parameters(), opt, sched))
        log_progress(log, "vae", step, total, losses, start, digits=4)
    vae.eval()
    return losses
