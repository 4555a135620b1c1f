"""Training the concept tokens of a pack over the frozen model: config, step sampling, one step.

This is the plain-PyTorch recipe (notebooks, tests, benchmarks); `pipelines/train` runs the same
`compute_loss` inside DeepSpeed engines on Ray workers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, Field

from .concepts.bank import ConceptBank
from .concepts.samples import ConceptExample, SampleBuilder, TrainBatch
from .objectives import LossWeights, concept_losses


class TrainConfig(BaseModel):
    """Defaults: the paper's recipe (AdamW, 2000 steps, batch 8 per concept); lr 1e-3 as peers use on token rows."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1, description="examples per concept per optimizer step")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    lambda_img: float = 1.0
    lambda_edit: float = 1.0
    num_und_tokens: int = Field(16, ge=1)
    num_gen_tokens: int = Field(16, ge=0)
    mode: str = Field("decoupled", pattern="^(decoupled|shared)$")
    init: str = Field("image", pattern="^(image|class_word|random)$")
    seed: int = 0
    vit_size: int = 64
    vae_size: int = 64

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(self.lambda_img, self.lambda_edit)


def example_seed(seed: int, concept_key: str, step: int, index: int) -> int:
    """A seed that depends on the concept and the step only — never on the pack it trains in."""
    digest = hashlib.sha256(f"{seed}|{concept_key}|{step}|{index}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


@dataclass
class ConceptPool:
    """The training examples of one concept (templates; the sampler assigns slot and seed)."""

    concept_key: str
    examples: list[ConceptExample]
    by_task: dict[str, list[ConceptExample]] = field(init=False)

    def __post_init__(self):
        if not self.examples:
            raise ValueError(f"concept {self.concept_key} has no training examples")
        self.by_task = {}
        for ex in self.examples:
            self.by_task.setdefault(ex.task, []).append(ex)


def step_examples(pools: list[ConceptPool], step: int, batch_size: int, seed: int) -> list[ConceptExample]:
    """`batch_size` examples per concept for `step`: tasks round-robin (balanced), picks seeded per concept."""
    out = []
    for slot, pool in enumerate(pools):
        tasks = sorted(pool.by_task)
        for i in range(batch_size):
            s = example_seed(seed, pool.concept_key, step, i)
            task = tasks[(step * batch_size + i) % len(tasks)]
            choices = pool.by_task[task]
            ex = choices[s % len(choices)]
            out.append(ConceptExample(slot=slot, task=ex.task, prompt=ex.prompt, answer=ex.answer, image=ex.image, target=ex.target, seed=s))
    return out


def compute_loss(bundle, bank: ConceptBank, batch: TrainBatch, weights: LossWeights):
    """Forward the frozen model with the bank's rows in place; returns (loss, per-concept task losses)."""
    p = batch.packed
    table, identifier_output = bank()
    override = None
    if p.virtual_indexes is not None:
        override = (p.virtual_indexes, table[p.virtual_rows])
    ce_slots = batch.sample_slots[p.ce_sample_ids]
    out = bundle.model(
        **p.model_inputs(),
        noise=batch.noise,
        embeds_override=override,
        ce_logits_fn=lambda h: bank.logits(h, bundle.model.language_model.lm_head, ce_slots, identifier_output),
    )
    loss, per_concept = concept_losses(out, batch, bank.num_concepts, weights)
    # Every bank tensor gets a (zero) gradient even when this batch (or this data-parallel rank's
    # share of it) never uses some rows: distributed gradient reductions need the same tensors.
    loss = loss + 0.0 * (table.sum() + identifier_output.sum())
    return loss, per_concept


def make_optimizer(bank: ConceptBank, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(bank.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    return opt, sched


def pack_step_examples(pools: list[ConceptPool], start: int, stop: int, batch_size: int, seed: int):
    """Every example that steps start..stop-1 of a pack draw (what `SampleBuilder.precompute` takes)."""
    for step in range(start, stop):
        yield from step_examples(pools, step, batch_size, seed)


def train_pack(bundle, bank: ConceptBank, pools: list[ConceptPool], cfg: TrainConfig, on_step=None,
               builder: SampleBuilder | None = None) -> list[dict]:
    """Train every concept of the pack for `cfg.steps` optimizer steps; returns per-step losses.

    `builder` (optional) is a `SampleBuilder` of this bundle and bank whose cache may already hold
    the pack's images (e.g. filled by `init_concept(..., cache=builder.cache)`).
    """
    bundle.model.freeze()
    if builder is None:
        builder = SampleBuilder(bundle, bank, cfg.vit_size, cfg.vae_size)
    elif builder.bank is not bank:
        raise ValueError("builder was made for another bank")
    # The VAE is frozen: encode each latent image the steps will use once, here, not at every step.
    builder.precompute(pack_step_examples(pools, 0, cfg.steps, cfg.batch_size, cfg.seed))
    opt, sched = make_optimizer(bank, cfg)
    device = next(bank.parameters()).device
    history = []
    for step in range(cfg.steps):
        batch = builder.batch(step_examples(pools, step, cfg.batch_size, cfg.seed)).to(device)
        loss, table = compute_loss(bundle, bank, batch, cfg.loss_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        record = {"step": step, "loss": float(loss.detach()), **{k: v.tolist() for k, v in table.items()}}
        history.append(record)
        if on_step is not None:
            on_step(record)
    return history
