"""Training packs of concepts in one DeepSpeed engine per worker (the body of the Ray Train loop).

One engine lives for the whole job: the frozen backbone is loaded once per worker, and between
packs only the bank's values and AdamW state are reset. Work is spread data-parallel *inside* a pack:
at each step every worker takes its share of every concept's examples (example i of a concept goes
to rank i mod W), DeepSpeed averages the gradients, and ZeRO partitions the bank's optimizer state
(ZeRO-3 also the frozen backbone) across workers. So a step's compute splits W ways while every
optimizer step still touches every concept of the pack, and a concept's data and randomness depend
only on (concept, step, index): the result is the same in any pack and on any number of workers.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from omnipersona.concepts.artifact import ConceptArtifact, ConceptManifest, artifact_subpath
from omnipersona.concepts.bank import ConceptBank
from omnipersona.concepts.init import init_concept
from omnipersona.concepts.samples import SampleBuilder
from omnipersona.training import ConceptPool, TrainConfig, compute_loss, step_examples

log = logging.getLogger(__name__)


@dataclass
class ConceptSpec:
    concept_key: str  # "tenant/concept"
    display_name: str
    class_word: str
    data_digest: str

    @property
    def tenant(self) -> str:
        return self.concept_key.split("/", 1)[0]

    @property
    def concept(self) -> str:
        return self.concept_key.split("/", 1)[1]


@dataclass
class Progress:
    """Where the job is: packs before `pack_index` are done; `step` steps of that pack are done."""

    pack_index: int = 0
    step: int = 0

    def to_json(self) -> str:
        return json.dumps({"pack_index": self.pack_index, "step": self.step})

    @classmethod
    def from_json(cls, text: str) -> "Progress":
        return cls(**json.loads(text))


class PackModule(nn.Module):
    """What DeepSpeed wraps: the frozen backbone plus the trainable bank."""

    def __init__(self, bundle, bank: ConceptBank):
        super().__init__()
        self.backbone = bundle.model
        self.bank = bank
        self._bundle = bundle

    def forward(self, batch, weights):
        return compute_loss(self._bundle, self.bank, batch, weights)


@dataclass
class Telemetry:
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    curve: dict[str, list[float]] = field(default_factory=dict)
    # Loss on the pack's first batch before training and after it: same data, a clean "did it learn".
    first_batch_before: float | None = None
    first_batch_after: float | None = None


def example_share(examples, rank: int, world: int):
    """Example i of each concept goes to rank i mod world (examples come concept-major)."""
    per_concept: dict[int, int] = {}
    mine = []
    for ex in examples:
        i = per_concept.get(ex.slot, 0)
        per_concept[ex.slot] = i + 1
        if i % world == rank:
            mine.append(ex)
    return mine


def engine_device(engine, bank: ConceptBank) -> torch.device:
    """Where the engine runs its module (DeepSpeed's `engine.device`); else where the bank lives."""
    device = getattr(engine, "device", None)
    return torch.device(device) if device is not None else next(bank.parameters()).device


class PackRunner:
    def __init__(self, bundle, engine, bank: ConceptBank, recipe: TrainConfig, rank: int, world: int, zero_stage: int):
        self.bundle, self.engine, self.bank, self.recipe = bundle, engine, bank, recipe
        self.rank, self.world, self.zero_stage = rank, world, zero_stage
        # Batches are built on the CPU; every step moves them to the engine's device (the worker's GPU).
        self.device = engine_device(engine, bank)
        self.builder = SampleBuilder(bundle, bank, recipe.vit_size, recipe.vae_size)

    # ------------------------------------------------------------- bank / optimizer state
    def start_pack(self, pools: list[ConceptPool], start: int = 0) -> int:
        """Encode, once, the VAE posterior of every latent image this rank's steps of the pack use
        (steps `start`.. and step 0, whose batch measures the first-batch losses), so that the steps
        never run the VAE encoder; drops the previous pack's. Returns the number of images encoded."""
        r = self.recipe
        steps = ([0] if start > 0 else []) + list(range(start, r.steps))
        mine = (ex for step in steps
                for ex in example_share(step_examples(pools, step, r.batch_size, r.seed), self.rank, self.world))
        return self.builder.precompute(mine)

    @torch.no_grad()
    def reset_for_pack(self, specs: list[ConceptSpec], pools: list[ConceptPool]) -> None:
        """Fresh concept values (seeded per concept) and zeroed AdamW state for a new pack."""
        from deepspeed.utils import safe_set_full_fp32_param

        fresh = ConceptBank(self.bank.num_concepts, self.bank.hidden_size, self.bank.vocab_size,
                            self.recipe.num_und_tokens, self.recipe.num_gen_tokens, mode=self.recipe.mode)
        lm = self.bundle.model.language_model
        # Initialisation reads vocabulary rows directly: under ZeRO-3 they must be gathered first.
        gathered = contextlib.nullcontext()
        if self.zero_stage == 3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters([lm.model.embed_tokens.weight, lm.lm_head.weight])
        with gathered:
            for slot, (spec, pool) in enumerate(zip(specs, pools)):
                images = [ex.image for ex in pool.examples if ex.task == "recognition" and ex.answer == "Yes" and ex.image is not None][:4]
                seed = int.from_bytes(hashlib.sha256(f"{self.recipe.seed}|{spec.concept_key}".encode()).digest()[:6], "little")
                init_concept(fresh, slot, self.bundle, spec.class_word, images, strategy=self.recipe.init, seed=seed,
                             cache=self.builder.cache)
        for name, param in self.bank.named_parameters():
            value = getattr(fresh, name).to(device=param.device, dtype=param.dtype)
            with self._whole(param, modify=True):
                param.data.copy_(value)
            if self.zero_stage > 0:
                safe_set_full_fp32_param(param, value.float())  # ZeRO's fp32 master partition
        self._reset_optimizer_state()

    def _whole(self, param, modify: bool = False):
        """Under ZeRO-3 a parameter is a shard outside forward: gather it (a collective)."""
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=0 if modify else None)

    def _reset_optimizer_state(self) -> None:
        """Zero AdamW's moments and step counts (created lazily, so absent before the first step).

        The optimizer only ever sees the bank (under ZeRO as flat partitions of it), so zeroing
        every state tensor is exactly a fresh optimizer for the new pack.
        """
        opt = self.engine.optimizer
        base = getattr(opt, "optimizer", opt)
        for state in base.state.values():
            for key, value in list(state.items()):
                if torch.is_tensor(value):
                    value.zero_()
                elif key == "step":
                    state[key] = 0

    def concept_tensors(self, slots: list[int]) -> list[dict[str, torch.Tensor]]:
        """Trained tensors of `slots`; every rank must call this (a collective under ZeRO-3)."""
        with contextlib.ExitStack() as stack:
            for p in self.bank.parameters():
                stack.enter_context(self._whole(p))
            return [self.bank.concept_tensors(s) for s in slots]

    # ------------------------------------------------------------- training
    def _step_batch(self, pools: list[ConceptPool], step: int):
        examples = example_share(step_examples(pools, step, self.recipe.batch_size, self.recipe.seed), self.rank, self.world)
        return examples, self.builder.batch(examples).to(self.device)

    @torch.no_grad()
    def first_batch_losses(self, pools: list[ConceptPool]) -> list[float]:
        """Per-concept loss (sum over its tasks) on step 0's examples with the current tokens."""
        _, batch = self._step_batch(pools, 0)
        _, table = self.engine(batch, self.recipe.loss_weights)
        totals = torch.zeros(len(pools))
        for values in table.values():
            totals += torch.nan_to_num(values[: len(pools)].cpu(), nan=0.0)
        return totals.tolist()

    def train_steps(self, pools: list[ConceptPool], start: int, stop: int, telemetry: list[Telemetry], on_step: Callable | None = None) -> None:
        weights = self.recipe.loss_weights
        for step in range(start, stop):
            t0 = time.perf_counter()
            examples, batch = self._step_batch(pools, step)
            loss, table = self.engine(batch, weights)
            self.engine.backward(loss)
            self.engine.step()
            dt = time.perf_counter() - t0
            for slot in range(len(pools)):
                tel = telemetry[slot]
                tel.steps += 1
                tel.samples += sum(1 for ex in examples if ex.slot == slot)
                tel.seconds += dt  # the pack's concepts train concurrently: each takes the whole step
                for task, values in table.items():
                    v = float(values[slot])
                    if v == v:  # not NaN: this rank saw that task for the concept
                        tel.curve.setdefault(task, []).append(v)
            if on_step is not None:
                on_step(step, float(loss.detach()))


def export_artifact(fs, artifact_root: str, spec: ConceptSpec, tensors: dict, recipe_hash: str, base_model_id: str,
                    base_fingerprint: str, telemetry: Telemetry, mode: str) -> str:
    """Write `<root>/<tenant>/<concept>/<digest>/` (temp keys then final keys, manifest last)."""
    final = {k: (sum(v[-5:]) / len(v[-5:])) for k, v in telemetry.curve.items() if v}
    manifest = ConceptManifest(
        tenant=spec.tenant,
        concept=spec.concept,
        display_name=spec.display_name,
        class_word=spec.class_word,
        training_config_hash=recipe_hash,
        data_digest=spec.data_digest,
        base_model_id=base_model_id,
        base_fingerprint=base_fingerprint,
        metrics={
            **{f"final_loss_{k}": float(v) for k, v in final.items()},
            **({"first_batch_loss_before": telemetry.first_batch_before} if telemetry.first_batch_before is not None else {}),
            **({"first_batch_loss_after": telemetry.first_batch_after} if telemetry.first_batch_after is not None else {}),
        },
        extra={
            "telemetry": {"steps": telemetry.steps, "samples": telemetry.samples, "wall_seconds": round(telemetry.seconds, 3)},
            "loss_curve": {k: [round(x, 5) for x in v] for k, v in telemetry.curve.items()},
        },
    )
    art = ConceptArtifact(**tensors, manifest=manifest, mode=mode)
    path = f"{artifact_root.rstrip('/')}/{artifact_subpath(spec.tenant, spec.concept, spec.data_digest)}"
    return art.save(path, filesystem=fs)


def artifact_exists(fs, artifact_root: str, spec: ConceptSpec) -> bool:
    import pyarrow.fs as pafs

    path = f"{artifact_root.rstrip('/')}/{artifact_subpath(spec.tenant, spec.concept, spec.data_digest)}/manifest.json"
    return fs.get_file_info(path).type == pafs.FileType.File
