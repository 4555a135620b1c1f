"""Build the world base in the BAGEL release layout, or reuse the shipped or the cached one.

    folder = ensure_world_base()            # the shipped base (omnipersona/pretrain/shipped/world-base)
    bundle = load_world_base()              # LoadedBagel, like any BAGEL checkpoint
    ensure_world_base(cfg)                  # another recipe: built once (~27 min on one CPU core), then cached

The default recipe's base ships with the package (`shipped.py`); `ensure_world_base` returns it
whenever the config asked for has its digest and no cache root is given.

Cache: `$OMNIPERSONA_BASE_CACHE/world-base-<config digest>` (default root `~/.cache/omnipersona`).
A build writes into a temporary sibling folder and renames it when complete, under a file lock, so
concurrent callers never see half a checkpoint and only one of them builds.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..model.bagel import Bagel
from ..model.checkpoint import LoadedBagel, load_bagel, save_bagel
from ..model.tokenizer import build_tiny_tokenizer, load_tokenizer
from ..model.vae import FluxVAE
from .base_stage import train_base
from .curriculum_stage import train_curriculum
from .batches import PretrainBatcher
from .config import PretrainConfig, bagel_config
from .shipped import RECIPE_FILE, SHIPPED_BASE, shipped_base_digest
from .tasks import corpus
from .vae_stage import train_vae
from .vit_stage import train_vit

CACHE_ENV = "OMNIPERSONA_BASE_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "omnipersona")


def base_folder(cfg: PretrainConfig | None = None, root: str | Path | None = None) -> Path:
    cfg = cfg or PretrainConfig()
    return Path(root or cache_root()) / f"world-base-{cfg.digest()}"


def is_complete(folder: Path) -> bool:
    return all((folder / f).exists() for f in ("ema.safetensors", "ae.safetensors", "tokenizer.json", RECIPE_FILE))


STAGE_VERSION = "1"  # bump when a cached stage's code changes what it trains
_VAE_SIZE_FIELDS = ("image_size", "vae_ch", "vae_levels", "z_channels")


def _stage_digest(cfg: PretrainConfig, fields: tuple[str, ...], size_fields: tuple[str, ...] | None = None) -> str:
    size = cfg.model.model_dump()
    if size_fields is not None:
        size = {k: size[k] for k in size_fields}
    data = {"stage": STAGE_VERSION, "model": size, **{f: getattr(cfg, f) for f in fields}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _cached_stage(stage_root: Path | None, name: str, module: torch.nn.Module, train) -> list[float]:
    """Run `train()` (which trains `module` in place and returns losses), or load its cached result.

    A stage's result depends only on its own settings and the model size, so retuning the later
    stages does not pay for the earlier ones again; the result is identical either way."""
    if stage_root is None:
        return train()
    weights, losses_file = stage_root / f"{name}.safetensors", stage_root / f"{name}.json"
    if weights.exists() and losses_file.exists():
        module.load_state_dict(load_file(weights))
        return json.loads(losses_file.read_text())
    losses = train()
    stage_root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, stage_root / f".{name}.partial")
    (stage_root / f".{name}.partial").rename(weights)
    losses_file.write_text(json.dumps(losses))
    return losses


def build_world_base(folder: str | Path, cfg: PretrainConfig | None = None, log=print, stage_root: str | Path | None = None) -> Path:
    """Pretrain a world base from scratch into `folder` (deterministic for a config and thread count).

    `stage_root` caches the autoencoder, vision-encoder and stage-3 results by their own settings."""
    stage_root = Path(stage_root) if stage_root is not None else None
    cfg = cfg or PretrainConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0 = time.time()
        bcfg = bagel_config(cfg.model)
        tokenizer = build_tiny_tokenizer(folder, corpus(cfg.seed), vocab_size=cfg.model.vocab_size - 16)
        tokenizer, special = load_tokenizer(folder)
        if len(tokenizer) > bcfg.llm.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model {bcfg.llm.vocab_size}")
        t_tok = time.time()
        torch.manual_seed(cfg.seed)
        vae = FluxVAE(bcfg.vae)
        vae_digest = _stage_digest(cfg, ("seed", "vae_crop_steps", "vae_steps", "vae_batch_size", "vae_lr"), _VAE_SIZE_FIELDS)
        vae_losses = _cached_stage(stage_root, f"vae-{vae_digest}", vae, lambda: train_vae(
            vae, steps=cfg.vae_steps, batch_size=cfg.vae_batch_size, lr=cfg.vae_lr,
            size=cfg.model.image_size, seed=cfg.seed, crop_steps=cfg.vae_crop_steps, log=log))
        vae.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        t_vae = time.time()
        torch.manual_seed(cfg.seed + 2)
        model = Bagel(bcfg)
        vit_digest = _stage_digest(cfg, ("seed", "vit_steps", "vit_batch_size", "vit_lr"))
        vit_losses = _cached_stage(stage_root, f"vit-{vit_digest}", model.vit_model, lambda: train_vit(
            model, steps=cfg.vit_steps, batch_size=cfg.vit_batch_size, lr=cfg.vit_lr,
            size=cfg.model.image_size, seed=cfg.seed, log=log))
        t_vit = time.time()
        torch.manual_seed(cfg.seed + 3)  # the same stream whether the stages above ran or were cached
        batcher = PretrainBatcher(model, vae, tokenizer, special, cfg.model.image_size)
        history = _cached_stage(stage_root, f"base-{cfg.base_stage_digest()}", model, lambda: train_base(model, batcher, cfg, log=log))
        t_base = time.time()
        torch.manual_seed(cfg.seed + 4)
        curriculum = train_curriculum(model, batcher, cfg, log=log) if cfg.curriculum.steps else []
        t_curriculum = time.time()
        save_bagel(folder, model, vae, tokenizer)
        tail = history[-100:]
        recipe = {
            "config": cfg.model_dump(mode="json"),
            "digest": cfg.digest(),
            "seconds": {"tokenizer": t_tok - t0, "vae": t_vae - t_tok, "vit": t_vit - t_vae, "base": t_base - t_vit,
                        "curriculum": t_curriculum - t_base, "total": time.time() - t0},
            "final": {
                "vae_loss": sum(vae_losses[-50:]) / max(1, len(vae_losses[-50:])),
                "vit_loss": sum(vit_losses[-50:]) / max(1, len(vit_losses[-50:])),
                "ce": sum(r["ce"] for r in tail) / max(1, len(tail)),
                "mse": sum(r["mse"] for r in tail) / max(1, len(tail)),
                "curriculum_ce": sum(r["ce"] for r in curriculum[-100:]) / len(curriculum[-100:]) if curriculum else None,
            },
            "torch": torch.__version__,
        }
        (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2))
        return folder
    finally:
        torch.set_num_threads(threads_before)


def ensure_world_base(cfg: PretrainConfig | None = None, root: str | Path | None = None, log=print, shipped: bool = True) -> Path:
    """The world base folder for `cfg`: the shipped one when it has `cfg`'s digest (and `shipped` and
    no `root` are given), else the cached one, built first when missing."""
    cfg = cfg or PretrainConfig()
    if shipped and root is None and shipped_base_digest() == cfg.digest() and is_complete(SHIPPED_BASE):
        return SHIPPED_BASE
    folder = base_folder(cfg, root)
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same base
        if is_complete(folder):
            return folder
        partial = folder.parent / f".{folder.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        if log:
            log(f"building the world base {folder.name} (config digest {cfg.digest()}) ...")
        build_world_base(partial, cfg, log=log, stage_root=folder.parent / "stages")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


def load_world_base(cfg: PretrainConfig | None = None, root: str | Path | None = None, log=print) -> LoadedBagel:
    """The world base for `cfg` (default: the shipped one), loaded."""
    return load_bagel(str(ensure_world_base(cfg, root, log=log)))
