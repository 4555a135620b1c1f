"""OmniPersona's joint objective, decomposed per concept.

    L = sum over concepts c of [ CE_c + lambda_img * MSE_c(t2i) + lambda_edit * MSE_c(edit) ]

Each term is a mean over that concept's own targets, and the pack's loss is the SUM over concepts:
a concept's gradient then depends only on its own samples (samples never attend across each other),
so with an element-wise optimizer (AdamW) training P concepts in one pack equals training each alone.
The terms come from the task registry (`omnipersona.tasks`): CE_c pools the answer tokens of every
`AnswerLoss` task; each `FlowLoss` task adds its own weighted MSE term, in registration order.

Data parallel: a rank that holds only part of a step's examples passes `counts`, each concept's
number of targets per term over the WHOLE step (`omnipersona.training.step_target_counts`). Its
terms are then sum(its targets) / count: summed over the ranks, that is exactly the one-rank mean,
whatever the number of ranks and however the examples are split.
"""
from __future__ import annotations


import torch

from .concepts.samples import TrainBatch
from .recipe import LossWeights
from .tasks import flow_tasks, task_type


# Per term ('ce', or a flow task's name): each concept slot's number of targets (answer tokens for
# 'ce', latent rows for a flow task) over a whole optimizer step, on every rank.
TargetCounts = dict[str, torch.Tensor]


def _per_slot_mean(values: torch.Tensor, slots: torch.Tensor, num_slots: int,
                   step_counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slot sum of `values` over the slot's count: the batch's own count, or `step_counts` (a
    data-parallel rank's share of the step's mean). Returns (means, the counts used)."""
    sums = values.new_zeros(num_slots).index_add(0, slots, values)
    if step_counts is None:
        counts = values.new_zeros(num_slots).index_add(0, slots, torch.ones_like(values))
    else:
        counts = step_counts.to(device=values.device, dtype=values.dtype)
    return sums / counts.clamp(min=1), counts


def concept_losses(out: dict, batch: TrainBatch, num_slots: int, weights: LossWeights,
                   counts: TargetCounts | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and per-concept losses: {'ce': [P]} and one [P] per flow task in the batch ('t2i',
    'edit', ...), NaN for a concept without such targets.

    `counts` (data parallel): every term divides by the concept's targets over the whole step, not
    by those in this batch; the per-concept values are then this rank's shares of the step's means
    (they sum over the ranks to the means), NaN where the whole step has no such targets.
    """
    p = batch.packed
    counts = counts or {}
    total = None
    table: dict[str, torch.Tensor] = {}
    sample_task = [task_type(t) for t in batch.sample_tasks]  # an unknown task fails here, naming the known ones
    if out.get("ce") is not None:
        slots = batch.sample_slots[p.ce_sample_ids]
        ce, n = _per_slot_mean(out["ce"].float(), slots, num_slots, counts.get("ce"))
        table["ce"] = torch.where(n > 0, ce.detach(), torch.nan)
        total = ce.sum()
    if out.get("mse") is not None:
        row_samples = p.mse_sample_ids
        per_row = out["mse"].float().mean(dim=-1)  # mean over latent channels of each token
        # Task of each latent row, vectorised: a per-sample task code indexed by the rows' samples
        # (one small tensor per batch instead of a Python loop over every latent row).
        flow = flow_tasks()
        code_of = {task.name: code for code, task in enumerate(flow)}
        codes = torch.tensor([code_of.get(t.name, -1) for t in sample_task], dtype=torch.long, device=row_samples.device)
        row_task = codes[row_samples]
        if bool((row_task < 0).any()):  # such rows would silently train nothing
            names = sorted({sample_task[i].name for i in row_samples[row_task < 0].tolist()})
            raise ValueError(f"task(s) {names} have flow-matching targets but no FlowLoss")
        for code, task in enumerate(flow):
            is_task = row_task == code
            if not bool(is_task.any()):
                continue
            slots = batch.sample_slots[row_samples[is_task]]
            mse, n = _per_slot_mean(per_row[is_task], slots, num_slots, counts.get(task.name))
            table[task.name] = torch.where(n > 0, mse.detach(), torch.nan)
            term = task.loss.scale(weights) * mse.sum()
            total = term if total is None else total + term
    if total is None and out.get("anchor") is None:
        raise ValueError("batch has no loss targets")
    if out.get("anchor") is not None:  # zero-valued term that keeps sharded ranks' graphs alike
        total = out["anchor"] if total is None else total + out["anchor"]
    return total, table
