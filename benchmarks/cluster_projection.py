"""Cluster projection: concepts per GPU-hour and per-step communication on 8, 64 and 512 H200s.

    python -m benchmarks.cluster_projection                    # the paper's recipe, measured H200 step
    python -m benchmarks.cluster_projection --gpus 8 64 512 4096 --share 32

Not a measurement of a cluster (we have none): a model built from measured and published numbers,
each a flag, so a reader can put in their own.

- Compute: the H200 step measured by `benchmarks/gpu_7b_step.py` (docs/performance-gpu.md): a
  pack of 8 concepts x 2 samples in 0.521 s under plain PyTorch (0.655 s under ZeRO-2), i.e.
  32.6 ms per sample; a pack of 16 x 2 took 1.093 s (linear in samples). A step costs
  `share x sample time`, `share` = the worker's examples per step.
- Packs grow with the cluster (`plan_pack_size`, docs/training.md): all W workers train one pack
  of P = share x W / batch concepts, so the share per worker stays put.
- Communication: one all-reduce (ZeRO-2: reduce-scatter + all-gather, the same volume) of the
  pack's bank gradients per step: P x (2 + und + gen) x hidden values. Time = latency x 2 log2(W)
  + bytes x 2 (W - 1) / W / bus bandwidth. Bus bandwidths: NCCL's all-reduce on H200 SXM with
  NVLink and NDR InfiniBand reaches 400-450 GB/s for messages of 8 GB and more (published
  nccl-tests figures); our messages are 10-500 MB, so the defaults assume less (--nvlink-busbw
  within a node, --ib-busbw across nodes).
- The paper's recipe: 2000 steps x batch 8 per concept.

Prints a markdown table and a last line `RESULT {json}`; no GPU, no network.
"""
from __future__ import annotations

import argparse
import math

from benchmarks.common import markdown_table, print_result

MEASURED_STEP_S = {"torch": 0.521, "zero2": 0.655}  # pack of 8 concepts x 2 samples, H200 (performance-gpu.md)
MEASURED_SAMPLES = 16
HIDDEN = 3584  # BAGEL-7B-MoT's LLM hidden size


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 64, 512])
    p.add_argument("--engine", choices=sorted(MEASURED_STEP_S), default="zero2", help="which measured step time")
    p.add_argument("--share", type=int, default=16, help="examples per worker per step (the measured step had 16)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=16, help="understanding tokens = generation tokens per concept")
    p.add_argument("--grad-bytes", type=int, default=4, help="bytes per reduced gradient value (fp32: 4, bf16: 2)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--nvlink-busbw", type=float, default=300.0, help="GB/s, all-reduce within one node")
    p.add_argument("--ib-busbw", type=float, default=100.0, help="GB/s, all-reduce across nodes")
    p.add_argument("--latency-us", type=float, default=10.0, help="per hop of the reduction tree")
    p.add_argument("--registrations-per-s", type=float, default=4.14,
                   help="the registry's measured rate (docs/performance.md section 6, PostgreSQL, 2 cores)")
    return p.parse_args(argv)


def project(args: argparse.Namespace, gpus: int) -> dict:
    sample_s = MEASURED_STEP_S[args.engine] / MEASURED_SAMPLES
    pack = max(1, args.share * gpus // args.batch)
    compute_s = args.share * sample_s
    values = pack * (2 + 2 * args.tokens) * HIDDEN
    message = values * args.grad_bytes
    busbw = (args.nvlink_busbw if gpus <= args.gpus_per_node else args.ib_busbw) * 1e9
    comm_s = (args.latency_us * 1e-6 * 2 * math.log2(gpus) + message * 2 * (gpus - 1) / gpus / busbw) if gpus > 1 else 0.0
    step_s = compute_s + comm_s  # no overlap assumed: DeepSpeed overlaps the reduction with backward, so this is the worse case
    pack_hours = args.steps * step_s / 3600
    concepts_per_hour = pack / pack_hours
    return {
        "gpus": gpus,
        "pack": pack,
        "step_s": step_s,
        "comm_mb": message / 1e6,
        "comm_ms": comm_s * 1e3,
        "comm_share": comm_s / step_s,
        "concepts_per_gpu_hour": concepts_per_hour / gpus,
        "concepts_per_hour": concepts_per_hour,
        "pack_hours": pack_hours,
        "registrations_needed_per_s": concepts_per_hour / 3600,
        "bank_state_gb_per_gpu": pack * (2 + 2 * args.tokens) * HIDDEN * 16 / 1e9,  # value, grad, 2 AdamW moments, fp32
    }


def crossover_gpus(args: argparse.Namespace) -> int:
    """The cluster size at which the per-step reduction takes as long as the step's compute."""
    gpus = args.gpus_per_node * 2
    while gpus < 10**7:
        row = project(args, gpus)
        if row["comm_share"] >= 0.5:
            return gpus
        gpus *= 2
    return gpus


def main(argv=None) -> None:
    args = parse_args(argv)
    rows = [project(args, g) for g in args.gpus]
    print(f"Paper recipe: {args.steps} steps x batch {args.batch}; {args.tokens}+{args.tokens} tokens; "
          f"{args.share} examples per worker per step; measured H200 step ({args.engine}); "
          f"all-reduce at {args.nvlink_busbw:g} GB/s in a node, {args.ib_busbw:g} GB/s across nodes\n")
    print(markdown_table(
        ["H200s", "pack (concepts)", "step (s)", "all-reduce (MB)", "all-reduce (ms)", "comm share",
         "concepts/GPU-h", "concepts/h", "hours per pack", "registrations/s needed", "bank state/GPU (GB)"],
        [[r["gpus"], r["pack"], r["step_s"], r["comm_mb"], r["comm_ms"], f"{r['comm_share']:.1%}",
          r["concepts_per_gpu_hour"], r["concepts_per_hour"], r["pack_hours"], r["registrations_needed_per_s"],
          r["bank_state_gb_per_gpu"]] for r in rows]))
    crossover = crossover_gpus(args)
    registry_limit = args.registrations_per_s * 3600 / rows[0]["concepts_per_gpu_hour"]
    print(f"\nThe per-step reduction reaches half the step at about {crossover:,} GPUs.")
    print(f"The registry's measured {args.registrations_per_s:g} registrations/s keeps up with about "
          f"{registry_limit:,.0f} GPUs.")
    print_result("cluster_projection", {"args": vars(args), "rows": rows, "crossover_gpus": crossover,
                                        "registry_limit_gpus": registry_limit})


if __name__ == "__main__":
    main()
