"""One OmniPersona training step at BAGEL-7B-MoT size on one GPU: tokens/s, MFU, peak memory.

    python benchmarks/gpu_7b_step.py            # BAGEL-7B-MoT config, random bf16 weights, CUDA
    python benchmarks/gpu_7b_step.py --tiny     # the same code path on CPU with the tiny config

A pack of P concepts, two samples each (recognition with a 224x224 ViT image; text-to-image of a
32x32 latent), through the frozen MoT backbone with only the concept bank trainable: forward,
backward, AdamW. Variants: plain PyTorch, DeepSpeed ZeRO-2 and ZeRO-3 (world size 1: on one GPU
ZeRO shards nothing, so these show the engines' overhead, not their memory split). FLOPs come from
torch's flop counter on the same step; MFU is against the GPU's dense bf16 peak. Prints a table and
a JSON line.

Issue 19, the decoder's attention / routing switches (omnipersona/model/llm.py), plain PyTorch:
  torch-before  per-sample SDPA calls + gather/scatter routing (the code before issue 19)
  torch         the defaults on a GPU: one SDPA call per layer over the padded pack + expert order
  torch-flex    one compiled flex_attention call per layer (block mask, no padding) + expert order
  torch-loop    per-sample SDPA calls + expert order
ZeRO variants run the defaults. FLOPs are counted on the per-sample attention (useful work only).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from omnipersona.concepts.bank import ConceptBank
from omnipersona.model.bagel import Bagel
from omnipersona.model.config import BagelConfig
from omnipersona.model.layers import PositionEmbedding, RotaryEmbedding
from omnipersona.model.packing import Text, VaeLatent, VitImage, pack

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
# variant -> (attention_impl, expert_order); other variants run the defaults ("auto", expert order)
DECODER = {"torch-before": ("loop", False), "torch-flex": ("flex", True), "torch-loop": ("loop", True)}


def set_decoder(model: Bagel, impl: str = "auto", expert_order: bool = True) -> None:
    model.language_model.model.attention_impl, model.language_model.model.expert_order = impl, expert_order


def build_model(cfg: BagelConfig, device: str, dtype: torch.dtype) -> Bagel:
    with torch.device("meta"):
        model = Bagel(cfg)
    model = model.to_empty(device=device).to(dtype)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name or "norm_moe_gen" in name:
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
        for m in model.modules():
            if isinstance(m, PositionEmbedding):
                m.__init__(m.max_num_patch_per_side, m.pos_embed.shape[1])
                m.to(device=device, dtype=dtype)
            if isinstance(m, RotaryEmbedding):
                m.__init__(cfg.llm.head_dim, cfg.llm.rope_theta)
                m.to(device=device)
    return model.freeze()


def make_batch(cfg: BagelConfig, bank: ConceptBank, concepts: int, image: int, latent: int, device):
    g = torch.Generator().manual_seed(1)
    vocab = cfg.llm.vocab_size
    words = lambda n: torch.randint(10, min(1000, vocab), (n,), generator=g).tolist()
    samples = []
    for slot in range(concepts):
        system = [bank.identifier_id(slot)] + words(1) + bank.und_ids(slot) + bank.gen_ids(slot) + words(1)
        samples.append([Text(system), VitImage(torch.rand(3, image, image, generator=g) * 2 - 1), Text(words(8)), Text(words(4), loss=True)])
        samples.append([Text(system), Text(words(16)), VaeLatent(torch.randn(cfg.vae.z_channels, latent, latent, generator=g), loss=True, timestep_logit=0.0)])
    batch = pack(samples, bos=1, eos=2, start_of_image=3, end_of_image=4, vocab_size=vocab, vit_patch=cfg.vit.patch_size,
                 vit_max_per_side=cfg.vit_max_num_patch_per_side, latent_patch=cfg.latent_patch_size,
                 max_latent_size=cfg.max_latent_size, virtual_gen_start=bank.virtual_gen_start)
    moved = {}
    for k, v in batch.__dict__.items():
        moved[k] = v.to(device) if torch.is_tensor(v) else v
    batch.__dict__.update(moved)
    return batch


def loss_fn(model: Bagel, bank: ConceptBank, batch, dtype):
    table, id_out = bank()
    out = model(**batch.model_inputs(), embeds_override=(batch.virtual_indexes, table[batch.virtual_rows].to(dtype)),
                ce_logits_fn=lambda h: bank.logits(h, model.language_model.lm_head, identifier_output=id_out))
    return out["ce"].float().mean() + out["mse"].float().mean()


def timed(step, sync, repeats: int) -> float:
    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--concepts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="torch-before,torch,torch-flex,zero2,zero3",
                    help="comma list of torch, torch-before, torch-flex, torch-loop, zero2, zero3")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if args.tiny:
        from omnipersona.model.tiny import tiny_config

        cfg, image, latent = tiny_config(), 32, 4
    else:
        cfg, image, latent = BagelConfig(), 224, 32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    model = build_model(cfg, device, dtype)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    bank = ConceptBank(args.concepts, cfg.llm.hidden_size, cfg.llm.vocab_size, 16, 16).to(device)
    with torch.no_grad():
        for p in bank.parameters():
            p.normal_(0, 0.02)
    batch = make_batch(cfg, bank, args.concepts, image, latent, device)
    tokens = batch.sequence_length
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)

    from torch.utils.flop_counter import FlopCounterMode

    set_decoder(model, "loop")  # useful FLOPs: no padding of the one-call path
    with FlopCounterMode(display=False) as fc:
        loss_fn(model, bank, batch, dtype).backward()
    step_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fcf:
        with torch.no_grad():
            loss_fn(model, bank, batch, dtype)
    fwd_flops = fcf.get_total_flops()
    set_decoder(model)
    rows = []
    for variant in args.variants.split(","):
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            set_decoder(model, *DECODER.get(variant, ("auto", True)))
            if variant.startswith("torch"):
                opt = torch.optim.AdamW(bank.parameters(), lr=1e-3)

                def step():
                    opt.zero_grad(set_to_none=True)
                    loss_fn(model, bank, batch, dtype).backward()
                    opt.step()
            else:
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29561")
                os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
                import deepspeed

                deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
                stage = int(variant[-1])
                wrapper = torch.nn.Module()
                wrapper.bank, wrapper.backbone = bank, model
                ds_cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}, "bf16": {"enabled": cuda},
                          "gradient_clipping": 0.0, "steps_per_print": 10**9}
                if stage == 3:
                    ds_cfg["zero_optimization"].update(stage3_param_persistence_threshold=10**7)
                model.uniform_calls = stage == 3
                engine, *_ = deepspeed.initialize(model=wrapper, optimizer=torch.optim.AdamW(bank.parameters(), lr=1e-3),
                                                  model_parameters=list(bank.parameters()), config=ds_cfg)

                def step():
                    loss = loss_fn(model, bank, batch, dtype)
                    engine.backward(loss)
                    engine.step()
            seconds = timed(step, sync, args.repeats)
            mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            achieved = step_flops / seconds
            rows.append(dict(variant=variant, step_s=round(seconds, 4), tokens_per_s=round(tokens / seconds, 1),
                             tflops=round(achieved / 1e12, 2), mfu=round(achieved / peak, 4) if peak else None, peak_mem_gib=round(mem, 2)))
        except Exception as exc:  # noqa: BLE001 - report and go on to the next variant
            rows.append(dict(variant=variant, error=f"{type(exc).__name__}: {str(exc)[:300]}"))
    samples = 2 * args.concepts
    best = min((r for r in rows if "step_s" in r), key=lambda r: r["step_s"], default=None)
    per_sample = best["step_s"] / samples if best else None
    concepts_per_gpu_hour = 3600 / (2000 * 8 * per_sample) if per_sample else None
    print(f"device {name}; params {params/1e9:.2f}B ({dtype}); build {build_s:.1f}s; pack {args.concepts} concepts x 2 samples = {tokens} tokens")
    print(f"FLOPs per step {step_flops/1e12:.2f} T (forward {fwd_flops/1e12:.2f} T, ratio {step_flops/fwd_flops:.2f}x); peak bf16 {peak/1e12 if peak else 'n/a'} TFLOP/s")
    print(f"{'variant':12} {'step s':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:12} error: {r['error']}")
        else:
            print(f"{r['variant']:12} {r['step_s']:8.3f} {r['tokens_per_s']:10.0f} {r['tflops']:8.1f} {r['mfu'] if r['mfu'] is not None else float('nan'):6.3f} {r['peak_mem_gib']:9.1f}")
    if concepts_per_gpu_hour:
        print(f"projected at the paper's recipe (2000 steps x batch 8 per concept): {concepts_per_gpu_hour:.2f} concepts per GPU-hour")
    print("JSON " + json.dumps(dict(device=name, params=params, tokens=tokens, step_flops=step_flops, forward_flops=fwd_flops,
                                    rows=rows, concepts_per_gpu_hour=concepts_per_gpu_hour)))


if __name__ == "__main__":
    main()
