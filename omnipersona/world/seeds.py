"""Named, independent random streams derived from one seed.

Every image and choice in the world comes from `derive_seed(seed, STREAM, index)`, so asking for
more training views never changes the held-out views, and any item can be rebuilt alone.
"""
from __future__ import annotations

import numpy as np

# Stream ids: fixed numbers, part of the world's reproducibility contract (do not renumber).
SPEC = 1
PRIVATE = 2
NAME = 3
TRAIN_VIEW = 10
HELD_OUT_VIEW = 11
HARD_NEGATIVE = 12
RANDOM_NEGATIVE = 13
EDIT = 14
PARG = 15
CONCEPT = 20
POOL = 21
STREAM_SAMPLE = 30


def derive_seed(seed: int, *path: int) -> int:
    """A 32-bit seed for the stream `path` under `seed` (both non-negative ints)."""
    if seed < 0 or any(p < 0 for p in path):
        raise ValueError("seeds and stream ids must be non-negative")
    return int(np.random.SeedSequence([seed, *path]).generate_state(1, dtype=np.uint32)[0])


def rng_for(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *path))
