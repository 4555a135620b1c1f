"""One packed training step of a BAGEL-7B-MoT-size model on one GPU: tokens/s, MFU, memory, ZeRO-2 vs -3.

    python -m benchmarks.gpu_step                 # on a GPU: BAGEL-7B-MoT config, random bf16 weights
    python -m benchmarks.gpu_step --tiny          # anywhere (CPU): the tiny config, fp32, same code path

Variants, each in its own fresh process (so peak memory is that variant's own):
  plain   plain PyTorch: frozen bf16 backbone, fp32 concept bank, torch AdamW; packs P = 1 and P = 8
          (the per-sample cost at P=1 vs P=8 is the GPU side of the packing question)
  zero2   the product's DeepSpeed path (`pipelines.train` PackModule + DeepSpeedConfig), ZeRO-2, world size 1
  zero3   the same, ZeRO-3: the backbone built under `deepspeed.zero.Init` (as the train loop does)
The model is built on `meta` and materialised directly in bf16 on the GPU (`to_empty` + in-place
normal_), frozen. The packed batch: P concepts x `--samples-per-concept` examples, alternating a
recognition sample (concept system prompt + a 224x224 ViT image + question -> answer) and a
text-to-image sample (system prompt + caption -> noised 32x32 VAE latent, i.e. a 256x256 image).
Reported: step time (median of `--steps` after `--warmup`), tokens/s, step FLOPs (torch flop counter
on one step), achieved TFLOP/s, MFU against the GPU's dense bf16 datasheet peak (printed; override
with --peak-tflops) and against a bf16 matmul timed in the same run, peak memory
(torch.cuda.max_memory_allocated), and concepts per GPU-hour at the paper's recipe (2000 steps x
batch 8 per concept) from the measured time per sample. The last line is `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
RECIPE_STEPS, RECIPE_BATCH = 2000, 8  # the paper's recipe, per concept
# Dense (no sparsity) bf16 tensor-core peaks from the datasheets; first match of the device name wins.
DATASHEET_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                         ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0))
TASK_CYCLE = ("recognition", "t2i")


# ----------------------------------------------------------------------------- one variant
def model_config(tiny: bool):
    from omnipersona.model.config import BagelConfig
    from omnipersona.model.tiny import tiny_config

    return tiny_config() if tiny else BagelConfig()  # BagelConfig() defaults = BAGEL-7B-MoT + SigLIP so400m + FLUX VAE


def make_examples(pack: int, per_concept: int, seed: int = 3):
    """P concepts x n examples of the recognition / t2i mix, images from the generated world."""
    from omnipersona.concepts.samples import ConceptExample
    from omnipersona.pretrain.world_concepts import concept_examples
    from omnipersona.world import make_concepts

    out = []
    for slot, concept in enumerate(make_concepts(pack, seed=seed)):
        examples = concept_examples(concept, slot, size=64, views=4, negatives=1, edits=0)
        by_task = {t: [e for e in examples if e.task == t and (t != "recognition" or e.answer == "Yes")] for t in TASK_CYCLE}
        for i in range(per_concept):
            ex = by_task[TASK_CYCLE[i % len(TASK_CYCLE)]][i // len(TASK_CYCLE)]
            out.append(ConceptExample(slot, ex.task, ex.prompt, ex.answer, ex.image, ex.target, seed=1000 * slot + i))
    return out


def batch_to(batch, device, dtype):
    """Move a TrainBatch to the model: index tensors to `device`, pixels / noise also to `dtype`.

    `mse_sample_ids` stays on the CPU: the loss code reads it row by row in Python.
    """
    import torch

    p = batch.packed
    for name, value in list(vars(p).items()):
        if not torch.is_tensor(value) or name == "mse_sample_ids":
            continue
        cast = dtype if value.is_floating_point() and name != "packed_timesteps" else None
        setattr(p, name, value.to(device=device, dtype=cast) if cast else value.to(device))
    batch.noise = None if batch.noise is None else batch.noise.to(device=device, dtype=dtype)
    batch.sample_slots = batch.sample_slots.to(device)
    return batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_single_process_distributed(use_gpu: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


def _build_zero3_bundle(cfg, device, dtype, ds_cfg):
    """The backbone built partitioned from the start (as pipelines.train.loop does for ZeRO-3)."""
    import deepspeed

    from benchmarks.common import random_bagel_bundle
    from omnipersona.model.bagel import Bagel

    with deepspeed.zero.Init(config_dict_or_path=ds_cfg):
        model = Bagel(cfg)
    bundle = random_bagel_bundle(cfg, device, dtype, model=model)
    bundle.model.uniform_calls = True  # every module called on every rank (ZeRO-3's rule)
    return bundle


def run_variant(name: str, args) -> dict:
    import torch

    from benchmarks.common import flop_counter, matmul_peak_flops, random_bagel_bundle, synchronize
    from omnipersona.concepts.bank import ConceptBank
    from omnipersona.concepts.samples import SampleBuilder
    from omnipersona.training import TrainConfig, compute_loss

    use_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda:0" if use_gpu else "cpu")
    dtype = torch.bfloat16 if use_gpu else torch.float32
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(args.threads)
    cfg = model_config(args.tiny)
    vit_size, vae_size = (64, 64) if args.tiny else (224, 256)
    out: dict = {"variant": name, "device": torch.cuda.get_device_name(0) if use_gpu else "cpu", "dtype": str(dtype)}
    if name == "plain":
        n = 8192 if use_gpu else 1024
        out["matmul_peak_tflops"] = matmul_peak_flops(device, dtype, n=n, repeats=10 if use_gpu else 3) / 1e12
        out["matmul_size"] = n

    t0 = time.perf_counter()
    ds_cfg = None
    if name == "plain":
        bundle = random_bagel_bundle(cfg, device, dtype)
    else:
        from pipelines.train.config import DeepSpeedConfig

        _init_single_process_distributed(use_gpu)
        ds_cfg = DeepSpeedConfig(zero_stage=2 if name == "zero2" else 3, bf16=use_gpu).ds_config()
        bundle = _build_zero3_bundle(cfg, device, dtype, ds_cfg) if name == "zero3" else random_bagel_bundle(cfg, device, dtype)
    bundle.model.freeze()
    synchronize(device)
    out["build_s"] = time.perf_counter() - t0
    out["params_b"] = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in bundle.model.parameters()) / 1e9
    weights = TrainConfig().loss_weights
    packs = [int(p) for p in (args.plain_packs if name == "plain" else str(args.pack)).split(",")]
    out["runs"] = []
    for P in packs:
        llm = cfg.llm
        bank = ConceptBank(P, llm.hidden_size, llm.vocab_size, 16, 16)
        with torch.no_grad():
            for p in bank.parameters():
                p.normal_(0.0, 0.02)
        bank.to(device)
        optimizer = torch.optim.AdamW(bank.parameters(), lr=1e-3)
        if name == "plain":
            def step(batch):
                loss, _ = compute_loss(bundle, bank, batch, weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        else:
            import deepspeed

            from omnipersona.training import PackModule

            engine, *_ = deepspeed.initialize(model=PackModule(bundle, bank), optimizer=optimizer,
                                              model_parameters=list(bank.parameters()), config=ds_cfg)

            def step(batch):
                loss, _ = engine(batch, weights)
                engine.backward(loss)
                engine.step()
        builder = SampleBuilder(bundle, bank, vit_size, vae_size)
        examples = make_examples(P, args.samples_per_concept)
        t_build = time.perf_counter()
        batch = batch_to(builder.batch(examples), device, dtype)
        synchronize(device)
        t_build = time.perf_counter() - t_build
        forward_flops = None
        if name == "plain":
            with flop_counter() as fwd, torch.no_grad():
                compute_loss(bundle, bank, batch, weights)
            forward_flops = fwd.get_total_flops()
        with flop_counter() as counted:
            step(batch)
        step_flops = counted.get_total_flops()
        for _ in range(max(0, args.warmup - 1)):
            step(batch)
        synchronize(device)
        if use_gpu:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step(batch)
            synchronize(device)
            times.append(time.perf_counter() - t)
        step_s = sorted(times)[len(times) // 2]
        samples = len(examples)
        run = {
            "pack": P, "samples": samples, "tokens": batch.packed.sequence_length, "step_s": step_s, "step_times_s": times,
            "batch_build_s": t_build, "tokens_per_s": batch.packed.sequence_length / step_s, "samples_per_s": samples / step_s,
            "step_flops": step_flops, "forward_flops": forward_flops,
            "step_over_forward": step_flops / forward_flops if forward_flops else None,
            "achieved_tflops": step_flops / step_s / 1e12,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if use_gpu else None,
            # Per concept the recipe needs 2000 x 8 samples; a step trains P x n of them.
            "concepts_per_gpu_hour": 3600 * samples / (step_s * RECIPE_STEPS * RECIPE_BATCH),
        }
        out["runs"].append(run)
        print(f"[gpu_step] {name} P={P}: {step_s * 1e3:.0f} ms/step, {run['tokens_per_s']:.0f} tokens/s, "
              f"{run['achieved_tflops']:.1f} TFLOP/s", flush=True)
        del batch, builder, optimizer, bank
        if name != "plain":
            del engine
    return out


# ----------------------------------------------------------------------------- driver
def peak_for(device_name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if key in device_name:
            return tflops, f"datasheet dense bf16 for '{key}'"
    return None, "unknown device: pass --peak-tflops"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config (CPU-sized), fp32 on CPU")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    p.add_argument("--variants", default="plain,zero2,zero3")
    p.add_argument("--pack", type=int, default=8, help="P of the ZeRO variants (and the largest of plain)")
    p.add_argument("--plain-packs", default="1,8", help="packs the plain variant measures")
    p.add_argument("--samples-per-concept", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps (the median counts)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the FLOP-counted step is one)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU, if not in the table")
    p.add_argument("--variant-timeout", type=int, default=190,
                   help="seconds per variant process (3 variants stay inside a 10-minute command)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _variant_argv(args, name: str) -> list[str]:
    argv = ["--variant", name, "--pack", str(args.pack), "--plain-packs", args.plain_packs, "--samples-per-concept",
            str(args.samples_per_concept), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads",
            str(args.threads)]
    return argv + (["--tiny"] if args.tiny else []) + (["--cpu"] if args.cpu else [])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.variant:
        print("VARIANT " + json.dumps(run_variant(args.variant, args)), flush=True)
        return {}
    t0 = time.perf_counter()
    results = []
    for name in [v for v in args.variants.split(",") if v]:
        print(f"[gpu_step] variant {name} ...", flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        try:
            done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_step", *_variant_argv(args, name)], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=args.variant_timeout, check=False)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("VARIANT ")]
            progress = [ln for ln in done.stdout.splitlines() if ln.startswith("[gpu_step]")]
            print("\n".join(progress), flush=True)
            if done.returncode == 0 and lines:
                results.append(json.loads(lines[-1][len("VARIANT "):]))
                print(lines[-1], flush=True)  # each variant's numbers survive even if a later one hangs
            else:
                results.append({"variant": name, "error": f"exit {done.returncode}: {done.stderr[-1500:]}"})
        except subprocess.TimeoutExpired as exc:
            results.append({"variant": name, "error": f"timed out after {args.variant_timeout}s: {str(exc.stderr or '')[-800:]}"})
        if "error" in results[-1]:
            print(f"[gpu_step] {name} FAILED: {results[-1]['error']}", flush=True)

    from benchmarks.common import machine, markdown_table, print_result

    device = next((r["device"] for r in results if "device" in r), "unknown")
    measured = next((r["matmul_peak_tflops"] for r in results if "matmul_peak_tflops" in r), None)
    peak, peak_source = peak_for(device, args.peak_tflops)
    rows = []
    for r in results:
        for run in r.get("runs", []):
            run["mfu_datasheet"] = run["achieved_tflops"] / peak if peak else None
            run["mfu_measured_matmul"] = run["achieved_tflops"] / measured if measured else None
            rows.append([r["variant"], run["pack"], run["samples"], run["tokens"], f"{run['step_s'] * 1e3:.0f}",
                         f"{run['tokens_per_s']:,.0f}", f"{run['step_flops'] / 1e12:.3g}",
                         f"{run['step_over_forward']:.2f}x" if run.get("step_over_forward") else "-",
                         f"{run['achieved_tflops']:.3g}",
                         f"{run['mfu_datasheet']:.1%}" if run["mfu_datasheet"] is not None else "-",
                         f"{run['mfu_measured_matmul']:.1%}" if run["mfu_measured_matmul"] is not None else "-",
                         f"{run['peak_memory_gib']:.1f}" if run["peak_memory_gib"] is not None else "-",
                         f"{run['concepts_per_gpu_hour']:.2f}"])
        if "error" in r:
            rows.append([r["variant"], "-", "-", "-", "failed", "-", "-", "-", "-", "-", "-", "-", r["error"].splitlines()[-1][:120] if r["error"] else ""])
    print()
    print(f"device: {device}; config: {'tiny' if args.tiny else 'BAGEL-7B-MoT (random bf16 weights)'}; "
          f"peak for MFU: {peak} TFLOP/s ({peak_source}); bf16 matmul measured in this run: "
          f"{'-' if measured is None else f'{measured:.3g}'} TFLOP/s")
    print(markdown_table(["variant", "P", "samples", "tokens", "step (ms)", "tokens/s", "step TFLOP", "step / fwd FLOPs",
                          "achieved TFLOP/s", "MFU (datasheet)", "MFU (measured matmul)", "peak mem (GiB)",
                          f"concepts / GPU-h ({RECIPE_STEPS} steps x batch {RECIPE_BATCH})"], rows))
    print()
    payload = {"machine": machine(), "args": vars(args), "device": device, "peak_tflops": peak, "peak_source": peak_source,
               "matmul_peak_tflops": measured, "variants": results, "wall_s": time.perf_counter() - t0}
    print_result("gpu_step", payload)
    return payload


if __name__ == "__main__":
    main()
