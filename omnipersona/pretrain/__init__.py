"""A small BAGEL-architecture base pretrained on the procedural world (see docs/evaluation.md).

Stage 1 trains the autoencoder on world images; stage 2 trains the LLM, the ViT and the
connectors on captioning, VQA, text-to-image, edits and in-context "named object" tasks, all
through `Bagel.forward` with `packing.pack`. The result is saved with `save_bagel` and cached.
"""
from .build import base_folder, build_world_base, ensure_world_base, load_world_base
from .config import ModelSize, PretrainConfig, Schedule, TaskMix, bagel_config

__all__ = [
    "ModelSize", "PretrainConfig", "Schedule", "TaskMix", "bagel_config",
    "base_folder", "build_world_base", "ensure_world_base", "load_world_base",
]
