"""Cutting a job's concepts into packs, and how big a pack may be.

A pack of P concepts trains in one DeepSpeed engine: every optimizer step touches every concept of
the pack, and the pack's step costs one packed forward/backward over P * batch examples. Per-worker
memory of a pack is its share of the examples' activations plus the bank's parameters, gradients
and AdamW moments; the frozen backbone is paid once per worker whatever P is.
"""
from __future__ import annotations

import math

from omnipersona.recipe import TrainConfig


def bank_bytes_per_concept(hidden: int, recipe: TrainConfig) -> int:
    """A concept's trainable rows with their gradient and AdamW moments (fp32), on every worker."""
    rows = 2 + recipe.num_und_tokens + recipe.num_gen_tokens  # identifier, output row, und, gen
    return rows * hidden * 4 * 4  # value, grad, exp_avg, exp_avg_sq


def activation_bytes_per_example(hidden: int, layers: int, tokens_per_example: int) -> int:
    """Activations one example keeps for backward: ~ 16 hidden-sized fp32 tensors per token per layer."""
    return tokens_per_example * layers * hidden * 4 * 16


def examples_per_worker(pack_size: int, batch_size: int, num_workers: int) -> int:
    """A step's examples (pack_size concepts x batch_size each) dealt round-robin over the workers:
    the most any one worker gets."""
    return math.ceil(pack_size * batch_size / num_workers)


def plan_pack_size(*, hidden: int, layers: int, recipe: TrainConfig, tokens_per_example: int, num_workers: int,
                   memory_budget_mb: float, tokens_per_worker: int | None, max_pack: int) -> int:
    """The largest pack whose per-worker share of a step fits the memory budget and, when given, the
    per-worker token budget.

    Every worker trains the same pack, so a worker's share of a step is ceil(P * batch / W)
    examples: with a fixed P it shrinks as W grows (one example per GPU per step at 64 workers and
    P * batch = 64). Sizing P from the per-worker budgets instead grows the pack with W, so each
    worker keeps a full share. A concept's tokens do not depend on its pack's other concepts
    (tests/integration/test_train.py::test_concept_in_a_pack_matches_concept_alone), so the plan
    may change with W without changing any result."""
    budget = memory_budget_mb * 2**20
    bank = bank_bytes_per_concept(hidden, recipe)
    per_example = activation_bytes_per_example(hidden, layers, tokens_per_example)

    def fits(p: int) -> bool:
        share = examples_per_worker(p, recipe.batch_size, num_workers)
        if tokens_per_worker is not None and share * tokens_per_example > tokens_per_worker:
            return False
        return p * bank + share * per_example <= budget

    size = 1
    while size < max_pack and fits(size + 1):
        size += 1
    return size


def make_packs(concept_keys: list[str], pack_size: int) -> list[list[str]]:
    """Sorted keys cut into consecutive packs: the same job always makes the same packs."""
    keys = sorted(concept_keys)
    return [keys[i : i + pack_size] for i in range(0, len(keys), pack_size)]
