"""Cutting a job's concepts into packs, and how big a pack may be.

A pack of P concepts trains in one DeepSpeed engine: every optimizer step touches every concept of
the pack, and the pack's step costs one packed forward/backward over P * batch examples. Per-worker
memory of a pack is its share of the examples' activations plus the bank's parameters, gradients
and AdamW moments; the frozen backbone is paid once per worker whatever P is.
"""
from __future__ import annotations

import math

from omnipersona.recipe import TrainConfig


def bytes_per_concept(hidden: int, layers: int, recipe: TrainConfig, tokens_per_example: int, num_workers: int) -> float:
    """Rough per-worker memory one concept adds to a pack (fp32)."""
    rows = 2 + recipe.num_und_tokens + recipe.num_gen_tokens  # identifier, output row, und, gen
    state = rows * hidden * 4 * 4  # value, grad, exp_avg, exp_avg_sq
    examples = math.ceil(recipe.batch_size / num_workers)
    # Activations kept for backward: ~ 16 hidden-sized tensors per token per layer (attention + MLP).
    activations = examples * tokens_per_example * layers * hidden * 4 * 16
    return state + activations


def pack_size_for(budget_mb: float, per_concept_bytes: float, max_pack: int) -> int:
    return max(1, min(max_pack, int(budget_mb * 2**20 // max(per_concept_bytes, 1))))


def make_packs(concept_keys: list[str], pack_size: int) -> list[list[str]]:
    """Sorted keys cut into consecutive packs: the same job always makes the same packs."""
    keys = sorted(concept_keys)
    return [keys[i : i + pack_size] for i in range(0, len(keys), pack_size)]
