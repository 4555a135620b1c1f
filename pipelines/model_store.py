"""Resolving the job's base model: a checkpoint URI, the shipped world base, or the tiny test model.

Also the vision-encoder feature extractor ingest uses to mine hard negatives: a small picklable
object that loads the base once per Ray worker process (functools.cache), never shipping weights
through the object store.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
from pydantic import SecretStr

from pipelines.storage import StorageConfig, filesystem_for

def world_base_folder() -> Path:
    """The shipped world base's folder (torch-free: preflight checks it like any base folder)."""
    from omnipersona.model.shipped_bases import WORLD_BASE

    if not (WORLD_BASE / "ema.safetensors").exists():
        raise FileNotFoundError(f"the shipped world base is missing from {WORLD_BASE}: reinstall the package, "
                                "or write it with python benchmarks/pretrain_base.py --write-shipped")
    return WORLD_BASE


def resolve_model_uri(uri: str, tiny_cache: str = "~/.cache/omnipersona/tiny-bagel") -> str:
    """'world' -> the shipped world base folder; 'tiny' -> a local tiny BAGEL folder (built once);
    anything else is returned as is."""
    if uri == "world":
        return str(world_base_folder())
    if uri != "tiny":
        return uri
    from omnipersona.model.tiny import build_tiny_bagel

    folder = Path(os.path.expanduser(tiny_cache))
    if not (folder / "ema.safetensors").exists():
        build_tiny_bagel(folder, seed=0)
    return str(folder)


@functools.cache
def _cached_bundle(uri: str, storage_key: str):
    from omnipersona.model.checkpoint import load_bagel

    if "://" in uri:
        fs, path = filesystem_for(uri, StorageConfig(**json.loads(storage_key)))
        return load_bagel(path, filesystem=fs)
    return load_bagel(uri)


def load_base(uri: str, storage: StorageConfig | None = None):
    """The loaded base model bundle (cached per process)."""
    storage = storage or StorageConfig()
    # A hashable key that keeps the credentials (SecretStr would dump masked).
    key = json.dumps({k: (v.get_secret_value() if isinstance(v, SecretStr) else v) for k, v in storage}, sort_keys=True)
    return _cached_bundle(uri, key)


class VisionEncoderFeatures:
    """`feature_fn` for ingest: mean-pooled ViT+connector features of the base model."""

    def __init__(self, model_uri: str, storage: StorageConfig | None = None, size: int = 64):
        self.model_uri, self.storage, self.size = model_uri, storage or StorageConfig(), size

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        from omnipersona.concepts.init import image_features

        if not images:
            return np.zeros((0, 1), np.float32)
        bundle = load_base(self.model_uri, self.storage)
        return image_features(bundle, images, vit_size=self.size).float().numpy()
