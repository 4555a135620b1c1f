"""Resolving the job's base model: a checkpoint URI, the shipped world base, or the tiny test model.

Also the vision-encoder feature extractor ingest uses to mine hard negatives: a small picklable
object that loads the base once per Ray worker process (functools.cache), never shipping weights
through the object store.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import SecretStr

from omnipersona.model.release_files import FINGERPRINT_FILE  # next to the weights: their fingerprint, and the file's size and time
from pipelines.storage import StorageConfig, filesystem_for, join, read_bytes

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class BaseModelInfo:
    """What the job's driver needs of the base model: read from its small files, never its weights
    (BAGEL-7B's are ~28 GB, and a head node usually has no GPU)."""

    uri: str
    model_id: str
    hidden_size: int
    num_layers: int
    fingerprint: str


def describe_base(uri: str, storage: StorageConfig | None = None) -> BaseModelInfo:
    """The base's id and sizes from its config files, and its weights' fingerprint from
    `FINGERPRINT_FILE` when that was computed from the weights file as it is now (same size and
    modification time); else the fingerprint is computed by a Ray task (on a worker: the weights
    never enter this process) and the file written for the next job, where the folder is writable.
    The training workers check it against the weights they load (`pipelines/train/runner.py`)."""
    from omnipersona.model.release_files import BAGEL_CONFIG, EMA, LLM_CONFIG

    storage = storage or StorageConfig()
    fs, folder = filesystem_for(uri, storage)
    llm = json.loads(read_bytes(fs, join(folder, LLM_CONFIG)))
    bagel = fs.get_file_info(join(folder, BAGEL_CONFIG))
    model_id = json.loads(read_bytes(fs, bagel.path)).get("model_id") if bagel.type.name == "File" else None
    weights = fs.get_file_info(join(folder, EMA))
    if weights.type.name != "File":
        raise FileNotFoundError(f"{uri} has no {EMA}: point model.uri at a BAGEL checkpoint folder")
    stamp = {"size": weights.size, "mtime_ns": weights.mtime_ns}
    fingerprint = _recorded_fingerprint(fs, join(folder, FINGERPRINT_FILE), stamp)
    if fingerprint is None:
        fingerprint = _fingerprint_on_a_worker(uri, storage)
        _record_fingerprint(fs, join(folder, FINGERPRINT_FILE), stamp, fingerprint)
    from omnipersona.model.config import BagelConfig

    return BaseModelInfo(uri=uri, model_id=model_id or BagelConfig().model_id, hidden_size=int(llm["hidden_size"]),
                         num_layers=int(llm["num_hidden_layers"]), fingerprint=fingerprint)


def _recorded_fingerprint(fs, path: str, stamp: dict) -> str | None:
    try:
        recorded = json.loads(read_bytes(fs, path))
    except (OSError, ValueError):
        return None
    return recorded.get("fingerprint") if recorded.get("weights") == stamp else None


def _record_fingerprint(fs, path: str, stamp: dict, fingerprint: str) -> None:
    try:
        with fs.open_output_stream(path) as f:
            f.write(json.dumps({"fingerprint": fingerprint, "weights": stamp}).encode())
    except OSError as e:  # a read-only model bucket: the next job computes it again
        log.info("could not record the base's fingerprint at %s (%s): each job computes it on a worker", path, e)


def _fingerprint_on_a_worker(uri: str, storage: StorageConfig) -> str:
    import ray

    @ray.remote(num_cpus=1, max_retries=2)
    def fingerprint(uri: str, storage: StorageConfig) -> str:
        from omnipersona.model.checkpoint import fingerprint_checkpoint

        fs, path = filesystem_for(uri, storage) if "://" in uri else (None, uri)
        return fingerprint_checkpoint(path, filesystem=fs)

    log.debug("fingerprinting the base's weights on a worker (once per base: recorded in %s)", FINGERPRINT_FILE)
    return ray.get(fingerprint.remote(uri, storage))


def base_weights_loaded_here() -> bool:
    """Whether this process has loaded a base through `load_base` (the job's driver should not have,
    unless it evaluates: docs/training.md)."""
    return _cached_bundle.cache_info().currsize > 0


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
