"""Segment lists -> `PackedBatch` through the model library's own packer (`packing.pack`).

All latents of a step are encoded by the frozen VAE in one batched call (posterior samples drawn
from a step-seeded generator), then handed to the packer as `VaeLatent` items.
"""
from __future__ import annotations

import torch

from ..model.images import to_tensor
from ..model.packing import PackedBatch, Text, VaeLatent, VitImage, pack_for
from .tasks import Seg


class PretrainBatcher:
    def __init__(self, model, vae, tokenizer, special, image_size: int):
        self.model, self.vae, self.tokenizer, self.special = model, vae, tokenizer, special
        self.image_size = image_size
        self._ids: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        cached = self._ids.get(text)
        if cached is None:
            cached = self.tokenizer.encode(text, add_special_tokens=False)
            if len(self._ids) < 200_000:
                self._ids[text] = cached
        return cached

    @torch.no_grad()
    def encode_latents(self, images: list, generator: torch.Generator) -> torch.Tensor:
        """Scaled posterior samples [N, z, h, w] (BAGEL's scaling: z = s * (raw - shift))."""
        size = (self.image_size, self.image_size)
        x = torch.stack([to_tensor(im, size) for im in images])
        dist = self.vae.ae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)
        return self.vae.config.scale_factor * (z - self.vae.config.shift_factor)

    def batch(self, samples: list[list[Seg]], generator: torch.Generator) -> PackedBatch:
        size = (self.image_size, self.image_size)
        latent_images = [s.image for segs in samples for s in segs if s.kind in ("cond", "target")]
        latents = iter(self.encode_latents(latent_images, generator)) if latent_images else iter(())
        packed_samples = []
        for segs in samples:
            items = []
            for s in segs:
                if s.kind == "text":
                    items.append(Text(self.ids(s.text), loss=s.loss))
                elif s.kind == "vit":
                    items.append(VitImage(to_tensor(s.image, size)))
                elif s.kind in ("cond", "target"):
                    items.append(VaeLatent(next(latents), loss=s.kind == "target"))
                else:
                    raise ValueError(f"unknown segment kind {s.kind!r}")
            packed_samples.append(items)
        return pack_for(self.model.config, self.special, packed_samples, generator=generator)
