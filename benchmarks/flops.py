"""FLOPs and efficiency of one training step: step FLOPs vs the forward's, and MFU on this CPU.

    python -m benchmarks.flops                       # tiny config and a larger CPU config
    python -m benchmarks.flops --configs tiny --pack 8 --batch-size 8

For each model config: one packed batch of `--pack` concepts x `--batch-size` examples (the task
mix of the training recipe: recognition and VQA with a ViT image, text QA, text-to-image with a
noised VAE latent, editing with a clean source latent + ViT image and a noised target), the
backbone frozen, the concept bank the only trainable parameter. Counted with
torch.utils.flop_counter (attention included, see `common.flop_counter`):
  - VAE precompute: `SampleBuilder.precompute`, the frozen VAE encoder on the t2i / edit images,
    run once per image when a pack starts (its posterior is then reused by every step),
  - batch building: what `SampleBuilder.batch` runs at every step (posterior sample, packing),
  - forward: `compute_loss` without grad,
  - training step: `compute_loss` + backward + AdamW step.
Achieved FLOP/s = step FLOPs / best-of-N step time; MFU = achieved / the best FLOP/s of a large
fp32 matmul timed in the same run with the same thread count (the practical peak of this CPU).
Times are the process's CPU time (one thread: what a dedicated core takes; the machine is shared).

Issue 19, same run: the step (and the no-grad forward) timed with the decoder's two switches
(`Qwen2MoTModel.attention_impl`, `.expert_order`, see omnipersona/model/llm.py), variants
interleaved repeat by repeat, best of `--repeats` each:
  before    per-sample attention (one SDPA call per sample and layer) + gather/scatter routing
  one-call  one SDPA call per layer over the padded pack      + gather/scatter routing
  sorted    per-sample attention                               + expert-ordered routing
  after     one SDPA call per layer                            + expert-ordered routing
The decoder's default ("auto") is `sorted` on a CPU and `after` on a GPU.
FLOPs are counted on the per-sample attention: the model's useful work, without the padding the
one-call path also computes (MFU's convention); the main table's step time is the defaults'
(on this CPU: `sorted`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    flop_counter,
    machine,
    markdown_table,
    matmul_peak_flops,
    print_result,
    set_threads,
    step_clock,
    tiny_model_dir,
)

# name -> (tiny_config overrides, image side). "small" is ~20x tiny in LLM width: still CPU-sized,
# big enough that matmuls, not Python, dominate a step.
CONFIGS = {
    "tiny": ({}, 64),
    "small": (dict(hidden_size=512, layers=4, heads=8, kv_heads=2, vit_hidden=256, vit_layers=4), 64),
}
# BAGEL-7B-MoT at full width, run with ONE LLM layer and ONE ViT layer and a small vocabulary (FLOPs
# only, no timing), then extrapolated per module to 28 LLM layers, 26 ViT layers, 152064 words.
BAGEL7B = "bagel7b"
SDPA_OPS = ("_scaled_dot_product",)
LLM_LAYER, VIT_LAYER = "Bagel.language_model.model.layers.0", "Bagel.vit_model.vision_model.encoder.layers.0"
HEAD, FROZEN_INPUT_MODULES = "Bagel.language_model.lm_head", ("Bagel.vit_model", "Bagel.connector")
# issue 19: variant -> (attention_impl, expert_order) of the decoder
VARIANTS = {"before": ("loop", False), "one-call": ("padded", False), "sorted": ("loop", True), "after": ("padded", True)}
VARIANT_NOTES = {"before": "per-sample SDPA + gather/scatter", "one-call": "one SDPA call + gather/scatter",
                 "sorted": "per-sample SDPA + expert order (CPU default)",
                 "after": "one SDPA call + expert order (GPU default)"}


def set_variant(bundle, variant: str) -> None:
    m = bundle.model.language_model.model
    m.attention_impl, m.expert_order = VARIANTS[variant]


def load_config(name: str, cache: Path):
    from omnipersona.model.tiny import build_tiny_bagel, tiny_config

    if name == BAGEL7B:
        from omnipersona.model.config import BagelConfig, LLMConfig, ViTConfig

        from benchmarks.common import random_bagel_bundle

        cfg = BagelConfig(llm=LLMConfig(num_hidden_layers=1, vocab_size=640), vit=ViTConfig(num_hidden_layers=2))
        return random_bagel_bundle(cfg, "cpu", torch.float32), 224, 256
    overrides, size = CONFIGS[name]
    if name == "tiny":
        from omnipersona.model.checkpoint import load_bagel

        return load_bagel(str(tiny_model_dir())), size, size
    return build_tiny_bagel(cache / f"bench-{name}", seed=0, config=tiny_config(**overrides)), size, size


def make_batch(bundle, pack: int, batch_size: int, vit_size: int, vae_size: int | None = None):
    from omnipersona.concepts.bank import ConceptBank
    from omnipersona.concepts.samples import SampleBuilder
    from omnipersona.pretrain.world_concepts import concept_pool
    from omnipersona.training import step_examples
    from omnipersona.world import make_concepts

    llm = bundle.config.llm
    bank = ConceptBank(pack, llm.hidden_size, llm.vocab_size, 16, 16)
    with torch.no_grad():  # a realistic scale for the rows (the init uses vocabulary statistics)
        std = float(bundle.model.language_model.model.embed_tokens.weight.float().std())
        for p in bank.parameters():
            p.normal_(0, std)
    bank.to(next(bundle.model.parameters()).device)
    pools = [concept_pool(c, 0, size=64, views=6, negatives=3, edits=2) for c in make_concepts(pack, seed=9)]
    builder = SampleBuilder(bundle, bank, vit_size, vae_size or vit_size)
    examples = step_examples(pools, 0, batch_size, 0)
    return bank, builder, examples


def op_totals(counter, scale_layers: tuple[int, int] | None = None, vocab: tuple[int, int] | None = None) -> dict:
    """{op: FLOPs} of a counted run; with `scale_layers` = (LLM layers, ViT layers) the one counted
    layer of each stands for all of them, and `vocab` = (used, real) rescales the LM head."""
    counts = counter.get_flop_counts()
    total = {str(op): n for op, n in counts.get("Global", {}).items()}
    if scale_layers is None:
        return total
    llm_layers, vit_layers = scale_layers
    extra = [(LLM_LAYER, llm_layers - 1), (VIT_LAYER, vit_layers - 1), (HEAD, vocab[1] / vocab[0] - 1)]
    for module, factor in extra:
        for op, n in counts.get(module, {}).items():
            total[str(op)] = total.get(str(op), 0) + factor * n
    return total


def module_total(counter, names: tuple[str, ...], vit_layers: int | None = None) -> float:
    counts = counter.get_flop_counts()
    total = sum(sum(counts.get(n, {}).values()) for n in names)
    if vit_layers is not None:
        total += (vit_layers - 1) * sum(counts.get(VIT_LAYER, {}).values())
    return total


def measure(name: str, args, cache: Path) -> dict:
    from omnipersona.training import TrainConfig, compute_loss, make_optimizer

    full = name == BAGEL7B
    bundle, vit_size, vae_size = load_config(name, cache)
    bundle.model.freeze()
    # The 7B-width run: one example of each task (recognition, VQA, text QA, t2i, edit), no timing.
    pack, batch_size = (1, 5) if full else (args.pack, args.batch_size)
    bank, builder, examples = make_batch(bundle, pack, batch_size, vit_size, vae_size)
    weights = TrainConfig().loss_weights
    opt, _ = make_optimizer(bank, TrainConfig(lr=1e-3))

    with flop_counter() as precompute_count:
        builder.precompute(examples)
    with flop_counter() as build_count:
        batch = builder.batch(examples)

    def step():
        loss, _ = compute_loss(bundle, bank, batch, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    decoder = bundle.model.language_model.model
    defaults = (decoder.attention_impl, decoder.expert_order)
    decoder.attention_impl = "loop"  # count the useful FLOPs, not the padding (see the docstring)
    with flop_counter() as fwd_count, torch.no_grad():
        compute_loss(bundle, bank, batch, weights)
    with flop_counter() as step_count:
        step()
    decoder.attention_impl, decoder.expert_order = defaults

    scale = dict(scale_layers=(28, 26), vocab=(bundle.config.llm.vocab_size, 152064)) if full else {}
    fwd_ops, step_ops = op_totals(fwd_count, **scale), op_totals(step_count, **scale)
    fwd, stp, bld = sum(fwd_ops.values()), sum(step_ops.values()), build_count.get_total_flops()
    attention = sum(n for op, n in fwd_ops.items() if any(k in op for k in SDPA_OPS))
    frozen_input = module_total(fwd_count, FROZEN_INPUT_MODULES, 26 if full else None)
    n = len(examples)
    row = {
        "config": name + (" (1 layer counted, x28 / x26)" if full else ""),
        "hidden": bundle.config.llm.hidden_size, "layers": 28 if full else bundle.config.llm.num_hidden_layers,
        "samples": n, "tokens": batch.packed.sequence_length, "forward_flops_per_sample": fwd / n,
        "step_flops_per_sample": stp / n, "build_flops_per_sample": bld / n,
        "precompute_flops_per_sample": precompute_count.get_total_flops() / n, "step_over_forward": stp / fwd,
        "attention_share_of_forward": attention / fwd, "vit_share_of_forward": frozen_input / fwd,
        "step_s": None, "build_s": None, "achieved_flops": None, "variants": {},
    }
    if full:
        return row
    step(); step()  # warm-up
    clock = step_clock("cpu")
    step_times, build_times = [], []
    for _ in range(args.repeats):
        t0 = clock()
        step()
        step_times.append(clock() - t0)
        t0 = clock()
        builder.batch(examples)
        build_times.append(clock() - t0)
    row.update(step_s=min(step_times), build_s=min(build_times), achieved_flops=stp / min(step_times))

    def forward():
        with torch.no_grad():
            compute_loss(bundle, bank, batch, weights)

    names = [v for v in args.variants.split(",") if v]
    times = {v: {"step_s": [], "forward_s": []} for v in names}
    for v in names:  # warm-up
        set_variant(bundle, v)
        step()
    for _ in range(args.repeats):
        for v in names:  # interleaved: a load spike on the shared machine hits every variant alike
            set_variant(bundle, v)
            t0 = clock()
            step()
            t1 = clock()
            forward()
            times[v]["step_s"].append(t1 - t0)
            times[v]["forward_s"].append(clock() - t1)
    decoder.attention_impl, decoder.expert_order = defaults
    row["variants"] = {v: {k: min(t) for k, t in ts.items()} for v, ts in times.items()}
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=f"tiny,small,{BAGEL7B}", help=f"comma list of {sorted(CONFIGS) + [BAGEL7B]}")
    p.add_argument("--pack", type=int, default=8, help="concepts in the packed batch")
    p.add_argument("--batch-size", type=int, default=8, help="examples per concept")
    p.add_argument("--repeats", type=int, default=5, help="timed steps (the best one counts)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"issue 19: decoder variants timed in the same run, comma list of {list(VARIANTS)} ('' = none)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    cache = Path(tempfile.gettempdir()) / "omnipersona-bench-models"
    # The peak is measured before and after the configs and the best kept: one slow sample on a
    # shared machine must not make the MFU look better than it is.
    peak = matmul_peak_flops("cpu", torch.float32, args.matmul_size)
    results = [measure(name, args, cache) for name in args.configs.split(",") if name]
    peak = max(peak, matmul_peak_flops("cpu", torch.float32, args.matmul_size))
    rows = []
    for r in results:
        timed = r["achieved_flops"] is not None
        r["mfu"] = r["achieved_flops"] / peak if timed else None
        rows.append([r["config"], f"{r['hidden']}x{r['layers']}", r["samples"], r["tokens"],
                     f"{r['forward_flops_per_sample'] / 1e9:.3f}", f"{r['step_flops_per_sample'] / 1e9:.3f}",
                     f"{r['step_over_forward']:.2f}x", f"{r['attention_share_of_forward']:.1%}",
                     f"{r['vit_share_of_forward']:.1%}", f"{r['precompute_flops_per_sample'] / 1e9:.3f}",
                     f"{r['build_flops_per_sample'] / 1e9:.3f}",
                     f"{r['step_s'] * 1e3:.0f}" if timed else "-", f"{r['build_s'] * 1e3:.0f}" if timed else "-",
                     f"{r['achieved_flops'] / 1e9:.2f}" if timed else "-", f"{peak / 1e9:.1f}",
                     f"{r['mfu']:.1%}" if timed else "-"])
    print()
    print(markdown_table(["config", "hidden x layers", "samples", "tokens", "fwd GFLOP / sample", "step GFLOP / sample",
                          "step / fwd", "attention share of fwd", "ViT share of fwd",
                          "VAE precompute GFLOP / sample (once a pack)", "batch-build GFLOP / sample (every step)",
                          "step (ms)", "build (ms)", "achieved GFLOP/s", "matmul peak GFLOP/s", "MFU"], rows))
    print()
    vrows = []
    for r in results:
        base = r["variants"].get("before")
        for v, t in r["variants"].items():
            vrows.append([r["config"], v, VARIANT_NOTES[v], f"{t['step_s'] * 1e3:,.0f}",
                          f"{base['step_s'] / t['step_s']:.2f}x" if base else "-", f"{t['forward_s'] * 1e3:,.0f}",
                          f"{base['forward_s'] / t['forward_s']:.2f}x" if base else "-"])
    if vrows:
        print(markdown_table(["config", "variant", "attention + routing", "step (ms)", "step speed-up vs before",
                              "forward (ms)", "forward speed-up vs before"], vrows))
        print()
    return print_result("flops", {"machine": machine(), "args": vars(args), "matmul_peak_flops": peak, "rows": results})


if __name__ == "__main__":
    main()
