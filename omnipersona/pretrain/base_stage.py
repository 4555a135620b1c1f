"""Stage 2: train the LLM (both experts), the ViT and the connectors on the world's task mix.

Everything goes through `Bagel.forward` on batches made by `packing.pack`, exactly the path
concept training uses later; the VAE from stage 1 stays frozen.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections import defaultdict

import numpy as np
import torch

from ..model.bagel import Bagel
from .batches import PretrainBatcher
from .config import PretrainConfig
from .tasks import pretrain_sample


def _lr_lambda(cfg: PretrainConfig):
    s = cfg.schedule

    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, s.warmup_steps))
        progress = min(1.0, step / max(1, s.steps))
        return warm * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    return f


def trainable_parameters(model: Bagel, train_vit: bool = True) -> list[torch.nn.Parameter]:
    frozen = {id(model.vit_pos_embed.pos_embed), id(model.latent_pos_embed.pos_embed)}
    if not train_vit:
        frozen |= {id(p) for p in model.vit_model.parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


def start_training(model: Bagel, train_vit: bool) -> list[torch.nn.Parameter]:
    """Train mode with only the trainable parameters requiring grad; returns them."""
    params = trainable_parameters(model, train_vit)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.train()
    return params


def end_training(model: Bagel) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _prefetched(make, count: int, depth: int = 3):
    """Yield make(0), make(1), ... built `depth` ahead in a thread (rendering and VAE encoding
    overlap the training step; order, hence determinism, is unchanged)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)

    def work():
        try:
            for i in range(count):
                buffer.put((make(i), None))
        except BaseException as exc:  # surfaced in the consumer
            buffer.put((None, exc))

    threading.Thread(target=work, daemon=True).start()
    for _ in range(count):
        item, exc = buffer.get()
        if exc is not None:
            raise exc
        yield item


def train_base(model: Bagel, batcher: PretrainBatcher, cfg: PretrainConfig, log=print) -> list[dict]:
    s = cfg.schedule
    params = start_training(model, cfg.base_trains_vit)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr, betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[dict] = []
    recent: dict[str, list[float]] = defaultdict(list)
    start = time.time()

    def make(step: int):
        drawn = [pretrain_sample(cfg.seed, step * s.batch_size + i, cfg.mix, cfg.model.image_size, cfg.cfg_dropout, cfg.target_repeats)
                 for i in range(s.batch_size)]
        return batcher.batch([segs for _, segs in drawn], g)

    for step, batch in enumerate(_prefetched(make, s.steps)):
        out = model(**batch.model_inputs())
        ce = out["ce"].mean() if out["ce"] is not None else torch.zeros(())
        mse = out["mse"].mean() if out["mse"] is not None else torch.zeros(())
        loss = ce + cfg.mse_weight * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        sched.step()
        record = {"step": step, "loss": float(loss.detach()), "ce": float(ce.detach()), "mse": float(mse.detach())}
        history.append(record)
        for k in ("ce", "mse"):
            recent[k].append(record[k])
        if log and (step % 50 == 0 or step == s.steps - 1):
            log(
                f"base step {step}/{s.steps} ce {np.mean(recent['ce'][-50:]):.3f} "
                f"mse {np.mean(recent['mse'][-50:]):.3f} ({time.time() - start:.0f}s)"
            )
    end_training(model)
    return history
