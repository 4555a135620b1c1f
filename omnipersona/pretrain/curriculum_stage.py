"""Stage 4: what the task mix of stage 3 leaves at chance in the CPU budget.

A base that names what it sees ("What colour is the object?" -> teal) still answered "Is the
object teal?" and "Is maeve in this image?" the same for every picture, and drew *some* item
icon next to an object but never the one asked for: both are plateaus the mixed objective does
not leave in the budget. Focused phases cross them (measured in docs/evaluation.md): phase 0
draws named items, phases 1-2 check one attribute (plain backgrounds, then anywhere), phase 3
recognises through a name with a one-fact description, mixed with the base's own named tasks,
item drawings, replay intent prompts and the whole task mix, with the learning rate annealed so
the rest is not forgotten.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..model.bagel import Bagel
from .base_stage import _prefetched, end_training, start_training
from .batches import PretrainBatcher
from .config import PretrainConfig, TaskMix
from .tasks import check_sample, item_t2i_sample, named_check_sample, pretrain_sample

_ALL = ("colour", "shape", "pattern")
_INTENT = TaskMix(**{k: float(k == "intent") for k in TaskMix.model_fields})
_NAMED_TASKS = TaskMix(**{k: float(k in ("attribute_check", "named_recognition")) for k in TaskMix.model_fields})


def per_sample_text_loss(ce: torch.Tensor, sample_ids: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Mean over samples of each sample's mean token loss: a one-token Yes / No weighs as much as a caption."""
    counts = torch.bincount(sample_ids, minlength=num_samples)
    sums = torch.zeros(num_samples, dtype=ce.dtype, device=ce.device).index_add_(0, sample_ids, ce)
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def curriculum_samples(cfg: PretrainConfig, step: int) -> list:
    c, size, seed = cfg.curriculum, cfg.model.image_size, cfg.seed + 11
    first = step * c.batch_size
    if step < c.item_steps:
        return [item_t2i_sample(seed, first + i, size) for i in range(c.batch_size)]
    step -= c.item_steps
    if step < c.plain_colour_steps:
        return [check_sample(seed, first + i, size, ("colour",), plain=True) for i in range(c.batch_size)]
    if step < c.plain_colour_steps + c.single_attribute_steps:
        return [check_sample(seed, first + i, size, _ALL, plain=False) for i in range(c.batch_size)]
    n_check, n_named, n_tasks, n_mix = c.named_batch
    out = [check_sample(seed, first + i, size, _ALL, plain=False) for i in range(n_check)]
    out += [named_check_sample(seed, first + i, size) for i in range(n_named)]
    out += [pretrain_sample(seed, first + i, _NAMED_TASKS, size)[1] for i in range(n_tasks)]
    out += [pretrain_sample(seed + 1, first + i, cfg.mix, size, cfg.cfg_dropout, cfg.target_repeats)[1] for i in range(n_mix)]
    out += [item_t2i_sample(seed + 2, first + i, size) for i in range(c.named_item_samples)]
    out += [pretrain_sample(seed + 3, first + i, _INTENT, size)[1] for i in range(c.named_intent_samples)]
    return out


def curriculum_lr_factor(cfg: PretrainConfig, step: int) -> float:
    """1 during phases 0-2; in phase 3 a cosine from 1 to `named_min_lr_ratio`."""
    c = cfg.curriculum
    start = c.item_steps + c.plain_colour_steps + c.single_attribute_steps
    if step < start or c.named_steps <= 1:
        return 1.0
    progress = (step - start) / (c.named_steps - 1)
    return c.named_min_lr_ratio + (1 - c.named_min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_curriculum(model: Bagel, batcher: PretrainBatcher, cfg: PretrainConfig, log=print) -> list[dict]:
    c = cfg.curriculum
    if sum(c.named_batch) + c.named_item_samples + c.named_intent_samples != c.batch_size:
        raise ValueError(f"curriculum.named_batch {c.named_batch} + named_item_samples {c.named_item_samples} + "
                         f"named_intent_samples {c.named_intent_samples} must add up to batch_size {c.batch_size}")
    params = start_training(model, cfg.base_trains_vit)
    opt = torch.optim.AdamW(params, lr=c.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: curriculum_lr_factor(cfg, step))
    g = torch.Generator().manual_seed(cfg.seed + 12)
    history: list[dict] = []
    start = time.time()
    batches = _prefetched(lambda step: batcher.batch(curriculum_samples(cfg, step), g), c.steps)
    for step, batch in enumerate(batches):
        out = model(**batch.model_inputs())
        ce = per_sample_text_loss(out["ce"].float(), batch.ce_sample_ids, c.batch_size) if out["ce"] is not None else torch.zeros(())
        mse = out["mse"].mean() if out["mse"] is not None else torch.zeros(())
        loss = ce + cfg.mse_weight * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        record = {"step": step, "ce": float(ce.detach()), "mse": float(mse.detach())}
        history.append(record)
        if log and (step % 100 == 0 or step == c.steps - 1):
            log(f"curriculum step {step}/{c.steps} ce {np.mean([r['ce'] for r in history[-100:]]):.3f} ({time.time() - start:.0f}s)")
    end_training(model)
    return history
