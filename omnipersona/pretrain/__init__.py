"""A small BAGEL-architecture base pretrained on the procedural world (see docs/evaluation.md).

Stage 1 trains the autoencoder on world images; stage 2 trains the LLM, the ViT and the
connectors on captioning, VQA, text-to-image, edits and in-context "named object" tasks, all
through `Bagel.forward` with `packing.pack`. The result is saved with `save_bagel` and cached; the
default recipe's result also ships with the package (`omnipersona.pretrain.shipped`).

The names below load lazily, so `omnipersona.pretrain.config` and `omnipersona.pretrain.shipped`
(where the shipped base lies) import without torch — a job's preflight reads them.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelSize": "config", "PretrainConfig": "config", "Schedule": "config", "TaskMix": "config", "bagel_config": "config",
    "base_folder": "build", "build_world_base": "build", "ensure_world_base": "build", "load_world_base": "build",
    "SHIPPED_BASE": "shipped", "SHIPPED_PROBE": "shipped",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
