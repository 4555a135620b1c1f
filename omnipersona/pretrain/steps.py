"""One optimizer step of a pretraining stage, the same for every stage that trains a module alone."""
from __future__ import annotations

import time

import numpy as np
import torch


def optimizer_step(loss: torch.Tensor, params, opt: torch.optim.Optimizer, sched) -> float:
    """Backward, clip the gradient norm to 1, step the optimizer and its schedule; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def log_progress(log, stage: str, step: int, total: int, losses: list[float], start: float, digits: int = 4) -> None:
    """Every 100 steps and at the end: the stage's running loss and elapsed time."""
    if log and (step % 100 == 0 or step == total - 1):
        log(f"{stage} step {step}/{total} loss {np.mean(losses[-50:]):.{digits}f} ({time.time() - start:.0f}s)")
