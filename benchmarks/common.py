"""Helpers shared by the benchmark scripts: machine description, tables, the tiny model, a matmul peak.

Every script prints one markdown table (what docs/performance.md shows) and, last, one line
`RESULT {json}` with every number, so a run can be pasted or parsed without re-reading the table.
"""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """What the numbers were measured on (printed with every table)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cores": cores,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def set_threads(threads: int) -> None:
    """One fixed intra-op thread count for every mode of a run (the machine is shared)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_result(name: str, payload: dict) -> dict:
    """One `RESULT {json}` line a script or a log scraper can pick up; returns `payload`."""
    print("RESULT " + json.dumps({"benchmark": name, **payload}, default=str), flush=True)
    return payload


def tiny_model_dir(folder: str | None = None) -> Path:
    """The tiny BAGEL in the release layout, built once into a cache folder (deterministic, seed 0)."""
    from omnipersona.model.tiny import build_tiny_bagel

    path = Path(folder or os.environ.get("OMNIPERSONA_BENCH_CACHE", Path.home() / ".cache" / "omnipersona" / "bench-tiny-bagel"))
    if not (path / "ema.safetensors").exists():
        build_tiny_bagel(path, seed=0)
    return path


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_clock(device: str | torch.device):
    """The clock to time compute with: on a CPU, this process's CPU time (the machine is shared, and
    with one thread CPU time is what a dedicated core takes); on a GPU, wall time after a sync."""
    return time.process_time if torch.device(device).type == "cpu" else time.perf_counter


def matmul_peak_flops(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
                      repeats: int = 5) -> float:
    """Best achieved FLOP/s of an n x n x n matmul: the practical peak of this device and dtype."""
    clock = step_clock(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (thread pool, kernel selection)
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = clock()
        a @ b
        synchronize(device)
        times.append(clock() - t0)
    return 2 * n**3 / min(times)


def flop_counter():
    """`FlopCounterMode` that also counts the CPU flash-attention kernel.

    torch's counter knows the CUDA attention kernels (flash, efficient, cuDNN) but not
    `_scaled_dot_product_flash_attention_for_cpu` (what SDPA with a mask runs on CPU): without this
    mapping every attention matmul of a CPU run would count as zero.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }
    return FlopCounterMode(display=False, custom_mapping=mapping)


def random_bagel_bundle(cfg, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, std: float = 0.02,
                        seed: int = 0, model=None):
    """A BAGEL of any config with random weights, built fast: on `meta`, then `to_empty` + in-place init.

    Nothing is ever materialised twice (the dtype is set while still on meta), so a 14B-parameter
    config costs its bf16 size once. `model` (e.g. one built under `deepspeed.zero.Init`) skips the
    build. The tokenizer is the tiny model's (its ids are valid in any larger vocabulary): benchmarks
    measure compute, not language.
    """
    from omnipersona.model.bagel import Bagel
    from omnipersona.model.checkpoint import LoadedBagel
    from omnipersona.model.tokenizer import load_tokenizer
    from omnipersona.model.vae import FluxVAE

    device = torch.device(device)
    if model is None:
        with torch.device("meta"):
            model = Bagel(cfg)
        model = model.to(dtype=dtype).to_empty(device=device)
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() > 1:
                    p.normal_(0.0, std, generator=gen)
                elif "norm" in name:
                    p.fill_(1.0)
                else:
                    p.zero_()
    rotary = model.language_model.model.rotary_emb
    rotary.__init__(cfg.llm.head_dim, cfg.llm.rope_theta)  # a buffer made on meta (or left on the CPU)
    rotary.to(device)
    torch.manual_seed(seed)
    vae = FluxVAE(cfg.vae).to(device=device, dtype=dtype).eval()
    tokenizer, special = load_tokenizer(tiny_model_dir())
    return LoadedBagel(model.eval(), vae, tokenizer, special, cfg, fingerprint="random", path="random")
