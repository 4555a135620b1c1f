"""Concept examples -> packed training batches.

An example carries its concept's integer slot in the pack (never a string), a task, its texts and
images, and a seed. The seed fixes everything random about the example (VAE posterior sample,
flow noise, flow timestep), so a concept trained inside a pack sees exactly what it would see alone.

Sample layouts (each starts with the concept's system prompt, no loss):
    recognition, vqa   [ViT image] question -> answer (CE)
    text_qa            question -> answer (CE)
    t2i                prompt -> [noised VAE latent of the target] (flow MSE, lambda_img)
    edit               [clean VAE latent + ViT image of the source] instruction -> [noised target] (flow MSE, lambda_edit)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.images import to_tensor
from ..model.packing import PackedBatch, Text, VaeLatent, VitImage
from .bank import ConceptBank
from .prompts import encode, sks, system_prompt_ids

TASKS = ("recognition", "vqa", "text_qa", "t2i", "edit")
CE_TASKS = ("recognition", "vqa", "text_qa")


@dataclass
class ConceptExample:
    slot: int
    task: str
    prompt: str
    answer: str | None = None
    image: np.ndarray | None = None  # uint8 HxWx3: question image, or the edit source
    target: np.ndarray | None = None  # uint8 HxWx3: the T2I / edit target
    seed: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")


@dataclass
class TrainBatch:
    packed: PackedBatch
    noise: torch.Tensor | None  # flow noise rows, aligned with the packed latent tokens
    sample_slots: torch.Tensor  # concept slot of each sample
    sample_tasks: list[str] = field(default_factory=list)


@dataclass
class SampleBuilder:
    """Turns examples into packed batches for one model (sizes, tokenizer, VAE) and one bank."""

    bundle: object  # omnipersona.model.checkpoint.LoadedBagel
    bank: ConceptBank
    vit_size: int = 64
    vae_size: int = 64

    def _encode_latent(self, image: np.ndarray, g: torch.Generator) -> torch.Tensor:
        x = to_tensor(image, (self.vae_size, self.vae_size))[None]
        vae = self.bundle.vae
        x = x.to(device=next(vae.parameters()).device, dtype=next(vae.parameters()).dtype)
        with torch.no_grad():
            dist = vae.ae.encode(x).latent_dist
        eps = torch.randn(dist.mean.shape, generator=g).to(dist.mean)
        z = dist.mean + dist.std * eps
        return (vae.config.scale_factor * (z - vae.config.shift_factor))[0]

    def items(self, ex: ConceptExample, g: torch.Generator) -> tuple[list, list[torch.Tensor]]:
        tok, bank = self.bundle.tokenizer, self.bank
        names = sks(bank, ex.slot)
        items: list = [Text(system_prompt_ids(tok, bank, ex.slot))]
        noises: list[torch.Tensor] = []
        patch_dim = self.bundle.config.patch_latent_dim

        def latent(image, target: bool):
            # Noise rows must line up with every latent token of the pack, clean ones included.
            z = self._encode_latent(image, g)
            p = self.bundle.config.latent_patch_size
            n = (z.shape[1] // p) * (z.shape[2] // p)
            if not target:
                noises.append(torch.zeros(n, patch_dim))
                return VaeLatent(z, loss=False)
            noises.append(torch.randn(n, patch_dim, generator=g))
            return VaeLatent(z, loss=True, timestep_logit=float(torch.randn((), generator=g)))

        if ex.task in ("recognition", "vqa"):
            items.append(VitImage(to_tensor(ex.image, (self.vit_size, self.vit_size))))
        if ex.task in CE_TASKS:
            items += [Text(encode(tok, ex.prompt, names)), Text(encode(tok, ex.answer or "", names), loss=True)]
        elif ex.task == "t2i":
            items += [Text(encode(tok, ex.prompt, names)), latent(ex.target, target=True)]
        else:  # edit
            items += [
                latent(ex.image, target=False),
                VitImage(to_tensor(ex.image, (self.vit_size, self.vit_size))),
                Text(encode(tok, ex.prompt, names)),
                latent(ex.target, target=True),
            ]
        return items, noises

    def batch(self, examples: list[ConceptExample]) -> TrainBatch:
        samples, noises = [], []
        for ex in examples:
            g = torch.Generator().manual_seed(int(ex.seed))
            items, n = self.items(ex, g)
            samples.append(items)
            noises += n
        packed = self.bundle.pack(samples, virtual_gen_start=self.bank.virtual_gen_start)
        return TrainBatch(
            packed=packed,
            noise=torch.cat(noises) if noises else None,
            sample_slots=torch.tensor([ex.slot for ex in examples]),
            sample_tasks=[ex.task for ex in examples],
        )
