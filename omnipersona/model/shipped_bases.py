"""Base models that ship inside the package, by the short name a job config uses (`model.uri`).

Torch-free and free of the measurement code: the product resolves `world` through this module; the
world base's recipe, build and checks live in `omnipersona.pretrain.shipped`.
"""
from __future__ import annotations

from pathlib import Path

# The BAGEL release layout of the base pretrained on the procedural world (docs/evaluation.md).
WORLD_BASE = Path(__file__).resolve().parents[1] / "pretrain" / "shipped" / "world-base"
