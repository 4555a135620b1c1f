"""Training the concept tokens of a pack over the frozen model: the recipe, step sampling, the loss,
and the one pack trainer.

`PackTrainer` runs a pack's steps over a `TrainEngine`: anything called as `engine(batch, weights,
counts)` with `engine.backward(loss)` and `engine.step()` (the latter also steps the LR schedule).
`TorchEngine` is the plain-PyTorch one (`train_pack`: notebooks, tests, benchmarks); the Ray workers
of `pipelines/train` hand it DeepSpeed's engine, which has the same shape. The recipe's optimizer
and LR schedule are built by `make_optimizer` for both.

Data parallel over W ranks, results do not depend on W: each rank takes its share of a step's
examples (`example_share`), divides each concept's loss terms by the concept's target counts over
the WHOLE step (`step_target_counts`, the same on every rank), and scales its loss by W because the
engine averages gradients over the ranks; the summed gradient is then exactly the one-rank gradient.
"""
from __future__ import annotations

import hashlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import zip_longest
from typing import Protocol

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .concepts.bank import ConceptBank
from .concepts.init import init_concept
from .concepts.prompts import encode, sks
from .concepts.samples import ConceptExample, ImageCache, SampleBuilder, TrainBatch
from .objectives import TargetCounts, concept_losses
from .recipe import TrainConfig
from .tasks import task_type


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


def step_examples(pools: list[ConceptPool], step: int, batch_size: int, seed: int,
                  skip: frozenset[int] | set[int] = frozenset()) -> list[ConceptExample]:
    """`batch_size` examples per concept for `step`: tasks round-robin (balanced), picks seeded per concept.

    `skip`: slots left out (concepts early stopping has stopped); the others' examples do not change."""
    out = []
    for slot, pool in enumerate(pools):
        if slot in skip:
            continue
        tasks = sorted(pool.by_task)
        for i in range(batch_size):
            s = example_seed(seed, pool.concept_key, step, i)
            task = tasks[(step * batch_size + i) % len(tasks)]
            choices = pool.by_task[task]
            ex = choices[s % len(choices)]
            out.append(ConceptExample(slot=slot, task=ex.task, prompt=ex.prompt, answer=ex.answer, image=ex.image, target=ex.target, seed=s))
    return out


def compute_loss(bundle, bank: ConceptBank, batch: TrainBatch, weights: LossWeights, counts: TargetCounts | None = None):
    """Forward the frozen model with the bank's rows in place; returns (loss, per-concept task losses).

    `counts`: the step's target counts when this batch is one data-parallel rank's share of it
    (`concept_losses`)."""
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
    loss, per_concept = concept_losses(out, batch, bank.num_concepts, weights, counts)
    # Every bank tensor gets a (zero) gradient even when this batch (or this data-parallel rank's
    # share of it) never uses some rows: distributed gradient reductions need the same tensors.
    loss = loss + 0.0 * (table.sum() + identifier_output.sum())
    return loss, per_concept


def pack_step_examples(pools: list[ConceptPool], start: int, stop: int, batch_size: int, seed: int):
    """Every example that steps start..stop-1 of a pack draw (what `SampleBuilder.precompute` takes)."""
    for step in range(start, stop):
        yield from step_examples(pools, step, batch_size, seed)


def example_share(examples: Iterable[ConceptExample], rank: int, world: int) -> list[ConceptExample]:
    """A data-parallel rank's share of a step: example i of each concept goes to rank i mod world
    (examples come concept-major)."""
    per_concept: dict[int, int] = {}
    mine = []
    for ex in examples:
        i = per_concept.get(ex.slot, 0)
        per_concept[ex.slot] = i + 1
        if i % world == rank:
            mine.append(ex)
    return mine


class _TargetCounter:
    """`omnipersona.tasks.SampleParts` that only counts an example's loss targets, by the packer's
    rules (`omnipersona.model.packing`): a loss text of n tokens gives n + 1 answer targets (each
    token after BOS, then EOS); a noised latent gives one row per latent patch. Nothing is encoded."""

    def __init__(self, tokenizer, names: dict[str, int], latent_rows: int, text_cache: dict):
        self.tokenizer, self.names, self.latent_rows, self.text_cache = tokenizer, names, latent_rows, text_cache
        self.answer_tokens = 0
        self.rows = 0

    def text(self, text: str, loss: bool = False) -> None:
        if loss:
            key = (text, tuple(sorted(self.names.items())))
            if key not in self.text_cache:
                self.text_cache[key] = len(encode(self.tokenizer, text, self.names)) + 1
            self.answer_tokens += self.text_cache[key]

    def vit(self, image) -> None:
        return None

    def clean_latent(self, image) -> None:
        return None

    def noised_latent(self, image) -> None:
        self.rows += self.latent_rows


def latent_rows(builder: SampleBuilder) -> int:
    """Latent rows (patches) of one image at the builder's VAE size: (size / VAE downsample / patch)^2."""
    cfg = builder.bundle.config
    side = builder.vae_size // cfg.vae.downsample // cfg.latent_patch_size
    return side * side


def step_target_counts(builder: SampleBuilder, examples: Iterable[ConceptExample], num_slots: int,
                       text_cache: dict | None = None) -> TargetCounts:
    """Per loss term ('ce', and each flow task's name), each slot's number of targets in `examples`
    (a whole step: every rank computes the same counts from `step_examples`, no communication).

    `text_cache` (optional) keeps answer-token counts between calls: answers repeat across steps.
    """
    text_cache = {} if text_cache is None else text_cache
    rows = latent_rows(builder)
    counts: dict[str, list[int]] = {"ce": [0] * num_slots}
    for ex in examples:
        counter = _TargetCounter(builder.bundle.tokenizer, sks(builder.bank, ex.slot), rows, text_cache)
        task = task_type(ex.task)
        task.sample(counter, ex)
        counts["ce"][ex.slot] += counter.answer_tokens
        if counter.rows:
            counts.setdefault(task.name, [0] * num_slots)[ex.slot] += counter.rows
    return {term: torch.tensor(values, dtype=torch.float32) for term, values in counts.items()}


# ----------------------------------------------------------------------------- a pack's start values


def concept_init_seed(seed: int, concept_key: str) -> int:
    """The seed of a concept's initial tokens: the same in any pack, on any worker."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{concept_key}".encode()).digest()[:6], "little")


@torch.no_grad()
def init_pack_concepts(bank: ConceptBank, bundle, pools: list[ConceptPool], class_words: list[str], cfg: TrainConfig,
                       cache: ImageCache | None = None) -> None:
    """Fresh initial tokens for every concept of a pack (slot = position in `pools`), by `cfg.init`,
    from up to 4 of the concept's positive recognition images."""
    for slot, (pool, class_word) in enumerate(zip(pools, class_words, strict=True)):
        images = [ex.image for ex in pool.examples
                  if ex.task == "recognition" and ex.answer == "Yes" and ex.image is not None][:4]
        init_concept(bank, slot, bundle, class_word, images, strategy=cfg.init,
                     seed=concept_init_seed(cfg.seed, pool.concept_key), cache=cache, vit_size=cfg.vit_size, vae_size=cfg.vae_size)


# ----------------------------------------------------------------------------- optimizer and LR schedule


def warmup_factor(warmup_steps: int, step: int) -> float:
    """Linear warmup, then constant: step s of a pack runs at lr * min(1, (s + 1) / warmup_steps)."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def make_optimizer(bank: ConceptBank, cfg: TrainConfig) -> tuple[torch.optim.AdamW, LambdaLR]:
    """The recipe's AdamW over the bank and its LR schedule: the one place both are built (the
    plain-PyTorch engine and DeepSpeed's are handed these two)."""
    optimizer = torch.optim.AdamW(bank.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # A partial, not a lambda: the scheduler's state_dict (DeepSpeed checkpoints it) stays plain data.
    return optimizer, LambdaLR(optimizer, partial(warmup_factor, cfg.warmup_steps))


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Zero AdamW's moments and step counts, as a fresh optimizer has them, keeping the tensors.

    Works on DeepSpeed's ZeRO wrappers too (their `state` is the wrapped AdamW's): the optimizer only
    ever sees the bank (under ZeRO as flat partitions of it), so this is exactly a fresh optimizer.
    The state is created lazily, so before the first step there is nothing to zero.
    """
    for state in optimizer.state.values():
        for key, value in list(state.items()):
            if torch.is_tensor(value):
                value.zero_()
            elif key == "step":
                state[key] = 0


_STEP_BEFORE_OPTIMIZER = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")


def set_schedule_step(scheduler: LambdaLR, step: int) -> None:
    """Put the LR schedule at `step` of the pack and write that step's lr into the optimizer.

    Step 0 when a pack starts (its warmup runs again); the checkpointed step when a pack resumes.
    """
    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():
        # Stepping a fresh scheduler before any optimizer step is the point here, not a mistake.
        warnings.filterwarnings("ignore", message=_STEP_BEFORE_OPTIMIZER, category=UserWarning)
        scheduler.step()


# ----------------------------------------------------------------------------- engines


class TrainEngine(Protocol):
    """What `PackTrainer` drives. DeepSpeed's engine has this shape already.

    Over W data-parallel ranks the engine AVERAGES gradients (DeepSpeed does, at every ZeRO stage);
    `PackTrainer` scales each rank's loss by W to undo that."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: LambdaLR
    device: torch.device

    def __call__(self, batch: TrainBatch, weights: LossWeights,
                 counts: TargetCounts | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None:
        """Optimizer step, LR schedule step, gradients cleared."""


class PackModule(nn.Module):
    """The frozen backbone plus the trainable bank; its forward is `compute_loss` (what an engine wraps)."""

    def __init__(self, bundle, bank: ConceptBank):
        super().__init__()
        self.backbone = bundle.model  # a submodule, so an engine places (and ZeRO-3 partitions) it
        self.bank = bank
        self._bundle = bundle

    def forward(self, batch: TrainBatch, weights: LossWeights, counts: TargetCounts | None = None):
        return compute_loss(self._bundle, self.bank, batch, weights, counts)


class TorchEngine:
    """The plain-PyTorch engine: a `PackModule`, its optimizer and LR schedule, with DeepSpeed's call shape."""

    def __init__(self, module: PackModule, optimizer: torch.optim.Optimizer, lr_scheduler: LambdaLR):
        self.module, self.optimizer, self.lr_scheduler = module, optimizer, lr_scheduler
        self.optimizer.zero_grad(set_to_none=True)  # like DeepSpeed: steps start from clean gradients

    @property
    def device(self) -> torch.device:
        return next(self.module.bank.parameters()).device

    def __call__(self, batch: TrainBatch, weights: LossWeights, counts: TargetCounts | None = None):
        return self.module(batch, weights, counts)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- the pack trainer


@dataclass
class StepRecord:
    """One optimizer step of a pack (what `on_step` receives on either path). With a `reduce`, or on
    one rank, the values are the whole step's, whatever the number of ranks."""

    step: int
    loss: float
    task_losses: dict[str, list[float]]  # term ('ce' or a flow task) -> per slot of the pack; NaN where a slot had none
    samples: list[int]  # examples per slot in the step (all ranks)
    seconds: float


@dataclass
class StepShare:
    """A rank's part of one step: its loss and per-concept values (shares that sum over the ranks to
    the step's loss and per-concept means) and the step's target counts (the same on every rank)."""

    loss: torch.Tensor
    table: dict[str, torch.Tensor]
    counts: TargetCounts


class PackTrainer:
    """The steps of a pack over any `TrainEngine`: `train_pack` and the Ray workers both run this.

    Data parallel over `world` ranks: at each step a rank takes its share of every concept's
    examples (`example_share`) and normalises each concept's terms by the step's counts over all
    ranks; the engine averages gradients, so the loss is scaled by `world` and the gradient equals
    the one-rank gradient. `reduce(tensor)` sums a tensor over the ranks in place (a collective; None
    on one rank): with it, step records and first-batch losses are the whole step's on every rank.
    """

    def __init__(self, engine: TrainEngine, builder: SampleBuilder, recipe: TrainConfig, rank: int = 0, world: int = 1,
                 reduce: Callable[[torch.Tensor], None] | None = None):
        self.engine, self.builder, self.recipe = engine, builder, recipe
        self.rank, self.world, self.reduce = rank, world, reduce
        self._answer_tokens: dict = {}  # step_target_counts' cache: answers repeat across steps
        # Slots early stopping has stopped: their examples leave the steps (`step_examples(skip=)`).
        self.stopped: set[int] = set()

    def _share(self, pools: list[ConceptPool], step: int) -> tuple[list[ConceptExample], list[ConceptExample], float]:
        """(the step's examples, what this rank runs, its weight). A rank without an example this step
        (W > batch size) runs the step's first one with weight 0: sharded engines (ZeRO-3) need every
        rank to run the model, and a zero-weight loss adds nothing."""
        r = self.recipe
        everything = step_examples(pools, step, r.batch_size, r.seed, skip=self.stopped)
        mine = example_share(everything, self.rank, self.world)
        return everything, (mine or everything[:1]), (1.0 if mine else 0.0)

    def examples(self, pools: list[ConceptPool], step: int) -> list[ConceptExample]:
        """The examples this rank runs at `step`."""
        return self._share(pools, step)[1]

    def batch(self, examples: list[ConceptExample]) -> TrainBatch:
        # Batches are built on the CPU and moved to where the engine runs (a worker's GPU).
        return self.builder.batch(examples).to(self.engine.device)

    def start_pack(self, pools: list[ConceptPool], start: int = 0, heldout: list[ConceptExample] = ()) -> int:
        """Make ready for the pack's steps `start`.. .

        A new pack (`start` 0) gets zeroed optimizer state; the LR schedule goes to `start`, so a new
        pack warms up again and a resumed one (optimizer state loaded from its checkpoint) continues.
        The VAE posterior of every latent image those steps use (and step 0's, whose batch the
        first-batch losses use, and the `heldout` examples early stopping checks) is encoded here,
        once, so the steps never run the VAE encoder. No concept is stopped. Returns the number of
        images encoded.
        """
        if start == 0:
            reset_optimizer_state(self.engine.optimizer)
        set_schedule_step(self.engine.lr_scheduler, start)
        self._answer_tokens.clear()
        self.stopped = set()
        steps = ([0] if start > 0 else []) + list(range(start, self.recipe.steps))
        return self.builder.precompute([*(ex for step in steps for ex in self.examples(pools, step)), *heldout])

    def step_share(self, pools: list[ConceptPool], step: int) -> StepShare:
        """This rank's forward of `step`: each concept's terms over its examples here, divided by the
        concept's targets in the whole step. Summed over the ranks: the one-rank loss."""
        everything, runs, weight = self._share(pools, step)
        counts = step_target_counts(self.builder, everything, self.builder.bank.num_concepts, self._answer_tokens)
        device = self.engine.device
        loss, table = self.engine(self.batch(runs), self.recipe.loss_weights, {k: v.to(device) for k, v in counts.items()})
        if weight != 1.0:
            loss, table = loss * weight, {k: v * weight for k, v in table.items()}
        return StepShare(loss, table, counts)

    def summed(self, share: StepShare, num_concepts: int) -> tuple[float, dict[str, list[float]]]:
        """The step's loss and per-concept means (NaN: no such targets): `share` summed over the
        ranks through `reduce` (one small collective), or this rank's share without one."""
        terms = [t for t, c in share.counts.items() if float(c.sum()) > 0]  # the same keys on every rank
        zeros = torch.zeros(self.builder.bank.num_concepts)
        rows = [torch.nan_to_num(share.table[t].detach().float().cpu(), nan=0.0) if t in share.table else zeros for t in terms]
        flat = torch.cat([share.loss.detach().float().cpu().reshape(1), *rows]).to(self.engine.device)
        if self.reduce is not None and self.world > 1:
            self.reduce(flat)
        flat = flat.cpu()
        per_term = {}
        for i, term in enumerate(terms):
            values = flat[1 + i * len(zeros): 1 + (i + 1) * len(zeros)]
            per_term[term] = torch.where(share.counts[term] > 0, values, torch.nan)[:num_concepts].tolist()
        return float(flat[0]), per_term

    def train(self, pools: list[ConceptPool], start: int, stop: int,
              on_step: Callable[[StepRecord], None] | None = None) -> list[StepRecord]:
        """Steps `start`..`stop`-1 of the pack; each calls `on_step` with its record."""
        records = []
        for step in range(start, stop):
            t0 = time.perf_counter()
            share = self.step_share(pools, step)
            # The engine averages the ranks' gradients; scaled by W they add up to the one-rank gradient.
            self.engine.backward(share.loss * self.world if self.world > 1 else share.loss)
            self.engine.step()
            loss, per_term = self.summed(share, len(pools))
            samples = [0 if slot in self.stopped else self.recipe.batch_size for slot in range(len(pools))]
            record = StepRecord(step, loss, per_term, samples, time.perf_counter() - t0)
            records.append(record)
            if on_step is not None:
                on_step(record)
        return records

    @torch.no_grad()
    def heldout_losses(self, heldout: list[ConceptExample], num_concepts: int) -> list[float]:
        """Per concept, the sum over its loss terms of each term's mean over ALL its `heldout`
        examples (`heldout_examples`), with the current tokens; NaN for a concept with none there.

        Like a step: the examples go in chunks of `batch_size` per concept, each rank runs its share
        of a chunk (a rank without one runs the chunk's first example at weight 0), every term is
        divided by the concept's targets over the whole held-out set, and the shares are summed over
        the ranks: the values do not depend on W or on the pack's other concepts."""
        totals = [math.nan] * num_concepts
        if not heldout:
            return totals
        counts = step_target_counts(self.builder, heldout, self.builder.bank.num_concepts, self._answer_tokens)
        device = self.engine.device
        on_device = {k: v.to(device) for k, v in counts.items()}
        loss_sum, table_sum = torch.zeros((), device=device), {}
        for chunk in _chunks(heldout, self.recipe.batch_size):
            mine = example_share(chunk, self.rank, self.world)
            loss, table = self.engine(self.batch(mine or chunk[:1]), self.recipe.loss_weights, on_device)
            weight = 1.0 if mine else 0.0
            loss_sum = loss_sum + loss.detach().float() * weight
            for term, values in table.items():
                values = torch.nan_to_num(values.detach().float(), nan=0.0) * weight
                table_sum[term] = table_sum[term] + values if term in table_sum else values
        _, per_term = self.summed(StepShare(loss_sum, table_sum, counts), num_concepts)
        seen = {ex.slot for ex in heldout}
        for slot in seen:
            if slot < num_concepts:
                totals[slot] = float(sum(v[slot] for v in per_term.values() if v[slot] == v[slot]))
        return totals

    def check(self, stopper: "EarlyStopper", heldout: list[ConceptExample], steps_done: int,
              tensors: Callable[[list[int]], list[dict[str, torch.Tensor]]]) -> list[int]:
        """An early-stopping check after `steps_done` steps: the held-out losses of the concepts
        still training, the best tokens kept (`tensors(slots)`: the current tokens of those slots;
        every rank calls it alike), the concepts whose patience ran out stopped. Returns those."""
        active = [ex for ex in heldout if ex.slot not in self.stopped]
        values = self.heldout_losses(active, len(stopper.concepts))
        improved, stopped = stopper.observe(steps_done, values, skip=self.stopped)
        if improved:
            for slot, t in zip(improved, tensors(improved), strict=True):
                stopper.best_tokens[slot] = t
        self.stopped |= set(stopped)
        return stopped

    @torch.no_grad()
    def first_batch_losses(self, pools: list[ConceptPool]) -> list[float]:
        """Per-concept loss (sum over its terms) on step 0's examples with the current tokens: the
        same data before and after training, a clean "did it learn"."""
        _, per_term = self.summed(self.step_share(pools, 0), len(pools))
        totals = torch.zeros(len(pools))
        for values in per_term.values():
            totals += torch.nan_to_num(torch.tensor(values), nan=0.0)
        return totals.tolist()


def train_pack(bundle, bank: ConceptBank, pools: list[ConceptPool], cfg: TrainConfig,
               on_step: Callable[[StepRecord], None] | None = None, builder: SampleBuilder | None = None,
               stopper: "EarlyStopper | None" = None, heldout: list[ConceptPool | None] | None = None) -> list[StepRecord]:
    """Train every concept of the pack for `cfg.steps` optimizer steps in plain PyTorch; returns the steps' records.

    `builder` (optional) is a `SampleBuilder` of this bundle and bank whose cache may already hold
    the pack's images (e.g. filled by `init_concept(..., cache=builder.cache)`).

    `stopper` (optional): early stopping on `heldout` (one held-out pool or None per concept, never
    trained on): a concept whose held-out loss stops improving stops training, the pack ends when
    all have stopped, and every checked concept's slot ends with the tokens of its best check
    (`stopper.concepts` holds the records).
    """
    bundle.model.freeze()
    if builder is None:
        builder = SampleBuilder(bundle, bank, cfg.vit_size, cfg.vae_size)
    elif builder.bank is not bank:
        raise ValueError("builder was made for another bank")
    optimizer, schedule = make_optimizer(bank, cfg)
    trainer = PackTrainer(TorchEngine(PackModule(bundle, bank), optimizer, schedule), builder, cfg)
    if stopper is None:
        trainer.start_pack(pools)
        return trainer.train(pools, 0, cfg.steps, on_step)
    if heldout is None or len(heldout) != len(pools):
        raise ValueError("early stopping needs one held-out pool (or None) per concept of the pack")
    held = heldout_examples(heldout, stopper.rule.max_examples, cfg.seed)
    trainer.start_pack(pools, heldout=held)
    records = []
    for step in range(cfg.steps):
        records += trainer.train(pools, step, step + 1, on_step)
        if stopper.rule.due(step + 1, cfg.steps):
            trainer.check(stopper, held, step + 1, lambda slots: [bank.concept_tensors(s) for s in slots])
            if stopper.all_stopped:
                break
    for slot, tensors in stopper.best_tokens.items():  # the tokens kept: each concept's best check's
        bank.load_concept(slot, tensors)
    return records


# ----------------------------------------------------------------------------- early stopping

HELDOUT_STEP = -1  # the `step` in held-out examples' seeds (`example_seed`): no training step has it


def _chunks(examples: list[ConceptExample], size: int) -> list[list[ConceptExample]]:
    """Concept-major `examples` cut so that chunk c holds each concept's examples c*size..(c+1)*size-1."""
    index: dict[int, int] = {}
    chunks: list[list[ConceptExample]] = []
    for ex in examples:
        i = index.get(ex.slot, 0)
        index[ex.slot] = i + 1
        while len(chunks) <= i // size:
            chunks.append([])
        chunks[i // size].append(ex)
    return chunks


def heldout_examples(pools: list[ConceptPool | None], max_examples: int, seed: int) -> list[ConceptExample]:
    """The examples early stopping checks: up to `max_examples` per concept from its held-out pool
    (slot = position; None: the concept has none), the tasks and, within a task, the answers taken
    in turn (a capped set holds recognition's Yes and No alike), each seeded by (concept, index)
    only: the same examples and noise at every check, in any pack, on any worker."""
    out = []
    for slot, pool in enumerate(pools):
        if pool is None:
            continue
        per_task = []
        for task in sorted(pool.by_task):
            by_answer: dict[str, list[ConceptExample]] = {}
            for ex in pool.by_task[task]:
                by_answer.setdefault(ex.answer or "", []).append(ex)
            per_task.append([ex for turn in zip_longest(*by_answer.values()) for ex in turn if ex is not None])
        picked = [ex for turn in zip_longest(*per_task) for ex in turn if ex is not None][:max_examples]
        for i, ex in enumerate(picked):
            out.append(ConceptExample(slot=slot, task=ex.task, prompt=ex.prompt, answer=ex.answer, image=ex.image,
                                      target=ex.target, seed=example_seed(seed, pool.concept_key, HELDOUT_STEP, i)))
    return out


@dataclass(frozen=True)
class StopRule:
    """When a concept stops: the held-out loss is checked every `check_every` steps (and after the
    last step); a check improves when it is below the best so far by more than `min_delta`; a
    concept stops after `patience` checks in a row without improvement. `max_examples`: held-out
    examples per concept per check."""

    check_every: int = 25
    patience: int = 3
    min_delta: float = 0.0
    max_examples: int = 16

    def __post_init__(self):
        if self.check_every < 1 or self.patience < 1 or self.min_delta < 0 or self.max_examples < 1:
            raise ValueError(f"invalid early-stopping rule {self}")

    def due(self, steps_done: int, steps: int) -> bool:
        """Whether a check follows the step that makes `steps_done` steps (of `steps`)."""
        return steps_done % self.check_every == 0 or steps_done == steps


@dataclass
class ConceptStop:
    """One concept's early-stopping record: its checks ([steps done, held-out loss]), the best
    check, the checks since without improvement, and when it stopped (None: it ran every step)."""

    checks: list[list[float]] = field(default_factory=list)
    best: float | None = None
    best_step: int | None = None
    bad_checks: int = 0
    stopped_at: int | None = None

    def observe(self, steps_done: int, value: float, rule: StopRule, steps: int) -> bool:
        """Record a check; True when it is the new best (its tokens are the ones to keep). NaN (no
        held-out examples) is no check: such a concept never stops. A concept whose patience runs
        out before the last step stops at `steps_done`."""
        if value != value or self.stopped_at is not None:
            return False
        self.checks.append([steps_done, float(value)])
        if self.best is None or value < self.best - rule.min_delta:
            self.best, self.best_step, self.bad_checks = float(value), steps_done, 0
            return True
        self.bad_checks += 1
        if self.bad_checks >= rule.patience and steps_done < steps:
            self.stopped_at = steps_done
        return False

    def summary(self, steps: int) -> dict:
        """What the manifest records: steps run and saved, the best check, every check."""
        run = self.stopped_at if self.stopped_at is not None else steps
        return {"stopped_at_step": self.stopped_at, "steps_run": run, "steps_saved": steps - run,
                "best_step": self.best_step, "best_heldout_loss": self.best, "checks": [list(c) for c in self.checks]}


class EarlyStopper:
    """Early stopping of a pack's concepts, each on its own held-out loss (`PackTrainer.check`):
    per-concept records, and the tokens of each concept's best check (`best_tokens`, slot ->
    tensors), which are the ones a pack keeps. A stopped concept's examples leave the steps; the
    pack ends when every concept has stopped (`all_stopped`) or the steps run out."""

    def __init__(self, rule: StopRule, num_concepts: int, steps: int):
        self.rule, self.steps = rule, steps
        self.concepts = [ConceptStop() for _ in range(num_concepts)]
        self.best_tokens: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def stopped(self) -> set[int]:
        return {slot for slot, c in enumerate(self.concepts) if c.stopped_at is not None}

    @property
    def all_stopped(self) -> bool:
        return all(c.stopped_at is not None for c in self.concepts)

    def observe(self, steps_done: int, values: list[float], skip: set[int] = frozenset()) -> tuple[list[int], list[int]]:
        """One check's values (per slot): (slots at a new best, slots that stop now)."""
        improved, stopped = [], []
        for slot, (concept, value) in enumerate(zip(self.concepts, values, strict=True)):
            if slot in skip:
                continue
            if concept.observe(steps_done, value, self.rule, self.steps):
                improved.append(slot)
            elif concept.stopped_at == steps_done:
                stopped.append(slot)
        return improved, stopped

    def state(self) -> list[dict]:
        """The records (no tensors), for a checkpoint."""
        return [asdict(c) for c in self.concepts]

    def load_state(self, state: list[dict]) -> None:
        self.concepts = [ConceptStop(**c) for c in state]
