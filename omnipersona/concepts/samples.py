"""Concept examples -> packed training batches.

An example carries its concept's integer slot in the pack (never a string), a task, its texts and
images, and a seed. The seed fixes everything random about the example (VAE posterior sample,
flow noise, flow timestep), so a concept trained inside a pack sees exactly what it would see alone.

Each sample starts with the concept's system prompt (no loss); its task's entry in the task
registry (`omnipersona.tasks`) composes the rest from `ExampleParts`. The built-in layouts:
    recognition, vqa   [ViT image] question -> answer (CE)
    text_qa            question -> answer (CE)
    t2i                prompt -> [noised VAE latent of the target] (flow MSE, lambda_img)
    edit               [clean VAE latent + ViT image of the source] instruction -> [noised target] (flow MSE, lambda_edit)

The VAE is frozen, so an image's posterior (mean, std) never changes: it is computed once per image
and size (`ImageCache`, filled ahead of a pack's steps by `SampleBuilder.precompute`), and each step
only draws the posterior sample from the example's generator, z = mean + std * randn(mean.shape, g):
the draw diffusers' `DiagonalGaussianDistribution.sample(g)` makes, so latents are bit-identical to
encoding the image again.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..model.images import to_tensor
from ..model.packing import PackedBatch, Text, VaeLatent, VitImage
from ..tasks import task_type
from .bank import ConceptBank
from .prompts import encode, sks, system_prompt_ids


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
        task_type(self.task)  # an unknown task fails here, naming the known ones


@dataclass
class TrainBatch:
    packed: PackedBatch
    noise: torch.Tensor | None  # flow noise rows, aligned with the packed latent tokens
    sample_slots: torch.Tensor  # concept slot of each sample
    sample_tasks: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "TrainBatch":
        """This batch with every tensor on `device` (a new batch; dtypes unchanged, the model casts).

        `SampleBuilder` builds batches on the CPU (token ids, pixels, noise; latents on the VAE's
        device): the trainer moves each to its model's device before the forward.
        """
        device = torch.device(device)

        def move(value):
            return value.to(device) if torch.is_tensor(value) else value

        packed = replace(self.packed, **{k: move(v) for k, v in vars(self.packed).items() if torch.is_tensor(v)})
        return TrainBatch(packed, move(self.noise), move(self.sample_slots), list(self.sample_tasks))


@torch.no_grad()
def encode_posterior(vae, image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen VAE's posterior of one image resized to size x size: (mean, std), [1, z, h, w] each."""
    param = next(vae.parameters())
    x = to_tensor(image, (size, size))[None].to(device=param.device, dtype=param.dtype)
    dist = vae.ae.encode(x).latent_dist
    return dist.mean, dist.std


class ImageCache:
    """Frozen-encoder results per (kind, image content, size): each is computed once and reused.

    Kinds used: "posterior" (the VAE's (mean, std), shared by the training latents and the init
    latent features) and "vit" (init's ViT + connector features). Entries stay on the model's device.
    """

    def __init__(self):
        self._entries: dict[tuple, object] = {}
        self.misses = 0  # encoder runs (tests and benchmarks read it)

    @staticmethod
    def key(kind: str, image: np.ndarray, size: int) -> tuple:
        """The image's content (digest, shape, dtype) at a model input size, for one kind of result."""
        a = np.ascontiguousarray(image)
        return (kind, hashlib.blake2b(memoryview(a).cast("B"), digest_size=16).digest(), a.shape, a.dtype.str, int(size))

    def get(self, kind: str, image: np.ndarray, size: int, compute: Callable[[], object]):
        return self.get_key(self.key(kind, image, size), compute)

    def get_key(self, key: tuple, compute: Callable[[], object]):
        if key not in self._entries:
            self.misses += 1
            self._entries[key] = compute()
        return self._entries[key]

    def retain(self, keys: set[tuple]) -> None:
        """Drop every entry not in `keys` (a long-lived builder keeps one pack's images only)."""
        self._entries = {k: v for k, v in self._entries.items() if k in keys}

    def __len__(self) -> int:
        return len(self._entries)


class _LatentImages:
    """Stands in for `ExampleParts` to list the images a task's sample gives the VAE, without building it."""

    def __init__(self):
        self.images: list[np.ndarray] = []

    def text(self, text: str, loss: bool = False) -> None:
        return None

    def vit(self, image: np.ndarray) -> None:
        return None

    def clean_latent(self, image: np.ndarray) -> None:
        self.images.append(image)

    noised_latent = clean_latent


def latent_images(ex: "ConceptExample") -> list[np.ndarray]:
    """The images of an example that the VAE encodes (t2i: the target; edit: source and target),
    read off its task's own sample layout so the two cannot disagree."""
    recorder = _LatentImages()
    task_type(ex.task).sample(recorder, ex)
    return recorder.images


class ExampleParts:
    """`omnipersona.tasks.SampleParts` for one example: token ids with the concept's identifier, images
    at the builder's sizes, and VAE latents drawn from the example's generator, in call order."""

    def __init__(self, builder: "SampleBuilder", slot: int, g: torch.Generator):
        self.builder, self.g = builder, g
        self.names = sks(builder.bank, slot)
        self.noises: list[torch.Tensor] = []  # one block per latent, aligned with the pack's latent tokens

    def text(self, text: str, loss: bool = False) -> Text:
        return Text(encode(self.builder.bundle.tokenizer, text, self.names), loss=loss)

    def vit(self, image: np.ndarray) -> VitImage:
        size = self.builder.vit_size
        return VitImage(to_tensor(image, (size, size)))

    def _latent(self, image: np.ndarray) -> tuple[torch.Tensor, int]:
        """The latent (posterior draw from the generator) and its number of latent tokens."""
        z = self.builder._encode_latent(image, self.g)
        p = self.builder.bundle.config.latent_patch_size
        return z, (z.shape[1] // p) * (z.shape[2] // p)

    def clean_latent(self, image: np.ndarray) -> VaeLatent:
        z, n = self._latent(image)
        # Noise rows must line up with every latent token of the pack, clean ones included.
        self.noises.append(torch.zeros(n, self.builder.bundle.config.patch_latent_dim))
        return VaeLatent(z, loss=False)

    def noised_latent(self, image: np.ndarray) -> VaeLatent:
        z, n = self._latent(image)  # draw order: posterior, flow noise, timestep
        self.noises.append(torch.randn(n, self.builder.bundle.config.patch_latent_dim, generator=self.g))
        return VaeLatent(z, loss=True, timestep_logit=float(torch.randn((), generator=self.g)))


@dataclass
class SampleBuilder:
    """Turns examples into packed batches for one model (sizes, tokenizer, VAE) and one bank.

    `cache` holds the VAE posteriors (and init features) of the images seen: call `precompute` with
    a pack's examples when the pack starts, and its steps never run the VAE encoder.
    """

    bundle: object  # omnipersona.model.checkpoint.LoadedBagel
    bank: ConceptBank
    vit_size: int = 64
    vae_size: int = 64
    cache: ImageCache = field(default_factory=ImageCache, repr=False)

    def posterior(self, image: np.ndarray, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of `image` at `size` (default: the builder's VAE size), encoded once."""
        size = self.vae_size if size is None else size
        return self.cache.get("posterior", image, size, lambda: encode_posterior(self.bundle.vae, image, size))

    def precompute(self, examples: Iterable["ConceptExample"]) -> int:
        """Encode the posterior of every latent image of `examples` not yet cached; returns how many.

        Entries of images not in `examples` are dropped (the previous pack's), so the cache holds
        one pack's images.
        """
        before, keep = self.cache.misses, set()
        seen: dict[int, np.ndarray] = {}  # the steps reuse the pool's arrays: hash each array once
        for ex in examples:
            for image in latent_images(ex):
                if id(image) in seen:
                    continue
                seen[id(image)] = image  # held, so its id is not reused during the loop
                key = self.cache.key("posterior", image, self.vae_size)
                self.cache.get_key(key, lambda: encode_posterior(self.bundle.vae, image, self.vae_size))
                keep.add(key)
        self.cache.retain(keep)
        return self.cache.misses - before

    def _encode_latent(self, image: np.ndarray, g: torch.Generator) -> torch.Tensor:
        mean, std = self.posterior(image)
        eps = torch.randn(mean.shape, generator=g).to(mean)  # DiagonalGaussianDistribution.sample's draw
        z = mean + std * eps
        vae = self.bundle.vae
        return (vae.config.scale_factor * (z - vae.config.shift_factor))[0]

    def items(self, ex: ConceptExample, g: torch.Generator) -> tuple[list, list[torch.Tensor]]:
        """The sample of `ex` (its task's layout after the concept's system prompt) and its flow-noise rows."""
        task = task_type(ex.task)
        parts = ExampleParts(self, ex.slot, g)
        items: list = [Text(system_prompt_ids(self.bundle.tokenizer, self.bank, ex.slot))]
        items += task.sample(parts, ex)
        return items, parts.noises

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
