"""OmniPersona's joint objective, decomposed per concept.

    L = sum over concepts c of [ CE_c + lambda_img * MSE_c(t2i) + lambda_edit * MSE_c(edit) ]

Each term is a mean over that concept's own targets, and the pack's loss is the SUM over concepts:
a concept's gradient then depends only on its own samples (samples never attend across each other),
so with an element-wise optimizer (AdamW) training P concepts in one pack equals training each alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .concepts.samples import CE_TASKS, TrainBatch


@dataclass(frozen=True)
class LossWeights:
    lambda_img: float = 1.0
    lambda_edit: float = 1.0


_TASK_CODES = {"t2i": 0, "edit": 1}  # the latent (MSE) tasks; others never own latent rows


def _per_slot_mean(values: torch.Tensor, slots: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums = values.new_zeros(num_slots).index_add(0, slots, values)
    counts = values.new_zeros(num_slots).index_add(0, slots, torch.ones_like(values))
    return sums / counts.clamp(min=1), counts


def concept_losses(out: dict, batch: TrainBatch, num_slots: int, weights: LossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and per-concept task losses ({'ce': [P], 't2i': [P], 'edit': [P]}, NaN where absent)."""
    p = batch.packed
    total = None
    table: dict[str, torch.Tensor] = {}
    sample_task = batch.sample_tasks
    if out.get("ce") is not None:
        slots = batch.sample_slots[p.ce_sample_ids]
        ce, counts = _per_slot_mean(out["ce"].float(), slots, num_slots)
        table["ce"] = torch.where(counts > 0, ce.detach(), torch.nan)
        total = ce.sum()
    if out.get("mse") is not None:
        row_samples = p.mse_sample_ids
        per_row = out["mse"].float().mean(dim=-1)  # mean over latent channels of each token
        # Task of each latent row, vectorised: a per-sample task code indexed by the rows' samples
        # (one small tensor per batch instead of a Python loop over every latent row).
        codes = torch.tensor([_TASK_CODES.get(t, -1) for t in sample_task], dtype=torch.long, device=row_samples.device)
        row_task = codes[row_samples]
        for task, lam in (("t2i", weights.lambda_img), ("edit", weights.lambda_edit)):
            is_task = row_task == _TASK_CODES[task]
            if not bool(is_task.any()):
                continue
            slots = batch.sample_slots[row_samples[is_task]]
            mse, counts = _per_slot_mean(per_row[is_task], slots, num_slots)
            table[task] = torch.where(counts > 0, mse.detach(), torch.nan)
            term = lam * mse.sum()
            total = term if total is None else total + term
    if total is None and out.get("anchor") is None:
        raise ValueError("batch has no loss targets")
    if out.get("anchor") is not None:  # zero-valued term that keeps sharded ranks' graphs alike
        total = out["anchor"] if total is None else total + out["anchor"]
    assert all(t in CE_TASKS + ("t2i", "edit") for t in sample_task)
    return total, table
