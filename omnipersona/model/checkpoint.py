"""Read and write the public BAGEL checkpoint layout.

    <dir>/llm_config.json      Qwen2 config (BAGEL's loader forces qk_norm, untied head, MoT layers)
    <dir>/vit_config.json      SigLIP config; the encoder runs num_hidden_layers - 1 layers
    <dir>/ema.safetensors      LLM + ViT + connectors, release key names
    <dir>/ae.safetensors       FLUX autoencoder, Black Forest Labs key names
    <dir>/tokenizer files      Qwen2 tokenizer (tokenizer.json, tokenizer_config.json, ...)
    <dir>/bagel_config.json    optional, ours: Bagel-level settings of non-default (tiny) models

`load_bagel` accepts a local folder or an `s3://` / other pyarrow-supported URI (copied to a local
cache first) and can build the model under a partitioning context (DeepSpeed ZeRO-3). Loading is
strict: any missing or unexpected key is an error that names the keys.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .bagel import Bagel
from .config import BagelConfig, LLMConfig, ViTConfig
from .release_files import AE, BAGEL_CONFIG, EMA, LLM_CONFIG, TOKENIZER_FILES, VIT_CONFIG, missing_release_files
from .tokenizer import SpecialTokens, load_tokenizer
from .vae import FluxVAE, infer_vae_config



class CheckpointError(RuntimeError):
    pass


@dataclass
class LoadedBagel:
    """Everything a checkpoint folder holds, ready to use."""

    model: Bagel
    vae: FluxVAE
    tokenizer: object | None
    special: SpecialTokens | None
    config: BagelConfig
    fingerprint: str
    path: str

    def pack(self, samples, **kwargs):
        """`packing.pack` with this model's sizes and marker tokens filled in."""
        from .packing import pack_for

        return pack_for(self.config, self.special, samples, **kwargs)


def fingerprint_state_dict(state: dict[str, torch.Tensor]) -> str:
    """A stable identity of the base weights: names, shapes and a strided sample of every tensor.

    Samples are rounded to bf16 so the same weights held in fp32 or bf16 give one fingerprint; reading
    ~4k values per tensor keeps it fast for a 14B-parameter model.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach()
        flat = t.reshape(-1)
        step = max(1, math.ceil(flat.numel() / 4096))
        sample = flat[::step].to(torch.bfloat16).to(torch.float32).cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


def fingerprint_checkpoint(path: str, filesystem=None) -> str:
    """The fingerprint `load_bagel` gives this checkpoint, from its weights file alone (no model built)."""
    folder = Path(_localize(path, filesystem))
    return fingerprint_state_dict(load_file(folder / EMA))


def _localize(path: str, filesystem=None) -> str:
    """Return a local folder for `path`, copying remote checkpoints into a temp cache."""
    if filesystem is None and "://" not in path:
        return path
    if filesystem is None and path.startswith("file://"):
        return path[len("file://"):]
    import pyarrow.fs as pafs

    if filesystem is None:
        filesystem, path = pafs.FileSystem.from_uri(path)
    cache_root = Path(os.environ.get("OMNIPERSONA_CACHE", Path(tempfile.gettempdir()) / "omnipersona-cache"))
    local = cache_root / hashlib.sha256(path.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    selector = pafs.FileSelector(path, recursive=False)
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        target = local / Path(info.path).name
        if target.exists() and target.stat().st_size == info.size:
            continue
        with filesystem.open_input_stream(info.path) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    return str(local)


def _read_configs(folder: Path, ema_shapes: dict[str, tuple]) -> BagelConfig:
    llm = LLMConfig.from_json_file(folder / LLM_CONFIG)
    # BAGEL's loader overrides these three whatever the file says.
    llm.qk_norm, llm.tie_word_embeddings, llm.layer_module = True, False, "Qwen2MoTDecoderLayer"
    vit = ViTConfig.from_json_file(folder / VIT_CONFIG)
    extra = json.loads((folder / BAGEL_CONFIG).read_text()) if (folder / BAGEL_CONFIG).exists() else {}
    cfg = BagelConfig(llm=llm, vit=vit, **extra)
    # The release hard-codes these sizes in code; the tensors are the ground truth.
    updates = {}
    if "latent_pos_embed.pos_embed" in ema_shapes:
        updates["max_latent_size"] = math.isqrt(ema_shapes["latent_pos_embed.pos_embed"][0])
    if "vit_pos_embed.pos_embed" in ema_shapes:
        updates["vit_max_num_patch_per_side"] = math.isqrt(ema_shapes["vit_pos_embed.pos_embed"][0])
    return cfg.model_copy(update=updates)


def _copy_param(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    param.data.copy_(value.to(param.dtype))


def load_bagel(path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, filesystem=None, *,
               init_context: AbstractContextManager | None = None,
               fill_param: Callable[[torch.nn.Parameter, torch.Tensor], None] = _copy_param) -> LoadedBagel:
    """Load a BAGEL checkpoint folder (local or remote URI) strictly.

    By default the model is built on the meta device, takes the file's tensors and moves to
    `device` / `dtype`. With `init_context` the model is built under that context instead, e.g.
    `deepspeed.zero.Init(config_dict_or_path=...)`, which partitions each parameter as it is
    created, so no rank ever holds the whole model; `fill_param(param, value)` then fills each
    parameter from the file (under ZeRO-3: gather, copy, re-partition) and the context decides the
    model's placement and dtype (`device` / `dtype` apply to the VAE).
    """
    folder = Path(_localize(path, filesystem))
    if not folder.is_dir():
        raise CheckpointError(f"base model folder {path} does not exist: point model.uri at a BAGEL checkpoint folder")
    missing = missing_release_files((f.name for f in folder.iterdir()), need_tokenizer=False)
    if missing:
        raise CheckpointError(f"{path} is not a BAGEL checkpoint folder: missing {', '.join(missing)}")
    with safe_open(folder / EMA, "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    cfg = _read_configs(folder, shapes)

    ae_state = load_file(folder / AE)
    cfg = cfg.model_copy(update={"vae": infer_vae_config(ae_state, cfg.vae)})

    # On meta (the file's tensors are assigned below), or under the caller's partitioning context.
    with torch.device("meta") if init_context is None else init_context:
        model = Bagel(cfg)
    state = load_file(folder / EMA)
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}/{EMA} does not match the BAGEL architecture of its configs: "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    if init_context is None:
        model.load_state_dict(state, strict=True, assign=True)
        # Non-persistent buffers (RoPE frequencies) were created on meta: rebuild them for real.
        model.language_model.model.rotary_emb.__init__(cfg.llm.head_dim, cfg.llm.rope_theta)
        model = model.to(device=device, dtype=dtype)
    else:
        for name, param in model.named_parameters():
            fill_param(param, state[name])
        for name, buf in model.named_buffers():
            if name in state:  # buffers are never partitioned
                buf.data.copy_(state[name])
    model.vit_pos_embed.pos_embed.requires_grad_(False)
    model.latent_pos_embed.pos_embed.requires_grad_(False)
    fingerprint = fingerprint_state_dict(state)

    vae = FluxVAE(cfg.vae)
    missing_ae = vae.load_bfl_state_dict(ae_state, strict=True)
    del missing_ae
    vae = vae.to(device=device, dtype=dtype).eval()

    # The weights load without tokenizer files (e.g. a bare converted checkpoint); text needs them.
    has_tokenizer = any((folder / f).exists() for f in TOKENIZER_FILES)
    tokenizer, special = load_tokenizer(folder) if has_tokenizer else (None, None)
    return LoadedBagel(model.eval(), vae, tokenizer, special, cfg, fingerprint, str(path))


def save_bagel(folder: str | Path, model: Bagel, vae: FluxVAE, tokenizer=None, write_bagel_config: bool = True) -> None:
    """Write the release layout (configs, ema.safetensors, ae.safetensors, tokenizer)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    (folder / LLM_CONFIG).write_text(json.dumps(cfg.llm.to_json_dict(), indent=2))
    (folder / VIT_CONFIG).write_text(json.dumps(cfg.vit.to_json_dict(), indent=2))
    if write_bagel_config:
        (folder / BAGEL_CONFIG).write_text(json.dumps(cfg.bagel_fields(), indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, folder / EMA, metadata={"format": "pt"})
    save_file({k: v.contiguous().cpu() for k, v in vae.bfl_state_dict().items()}, folder / AE)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
