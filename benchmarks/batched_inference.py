"""Batched multi-concept inference: requests per second against the batch size, on CPU.

    python -m benchmarks.batched_inference                    # tiny and small, ~1.5 CPU-minutes
    python -m benchmarks.batched_inference --configs tiny --batch-sizes 1,4,16

One `Persona` holds `--requests` concepts (16 by default; random rows at the vocabulary's scale,
16 understanding + 16 generation tokens each, the paper's default). Every task sends one request
per concept, and each concept's request uses its own concept's tokens:
  - recognition: "Is <c> in this image?" with a 64x64 image, the yes-probability (1 decoded token),
  - answer: "What does <c> wear?" with an image, `--answer-tokens` greedy tokens,
  - generate: text-to-image of <c> (64x64, `--steps` Euler steps, text CFG), no replay,
  - edit: the same for an edit of a 64x64 source (text and image CFG), no replay.
`single` runs the requests with the one-request methods (`understand`, `generate`, `edit`), `B=n`
with the batched ones in batches of n (`Persona.batch_size`). The persona's concept prompts are
prefilled before timing (a server keeps them). Rates use this process's CPU time (one thread: what
a dedicated core takes; the machine is shared); ratios are against B=1. "max diff" is the largest
difference of any batch size's results from B=1's: yes-probability for the understanding tasks (and
the answers must be the same text), 0-255 pixel value for pictures.

A second table runs the evaluation harness (`evaluate_concept`, replay on, `--steps`) on one
generated world concept's eval set (the default `EvalOptions`: 12 recognition images, 8 text
questions, 20 VQA, 3 generations, 3 PARG requests, 3 edits), once with the persona's batched
methods hidden (one case at a time, as before) and once with them (the harness batches the
understanding cases; pictures stay one at a time); it checks the metrics are equal.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table, print_result, set_threads, step_clock  # noqa: E402
from benchmarks.flops import CONFIGS, load_config  # noqa: E402

TASKS = ("recognition", "answer", "generate", "edit")


def make_persona(bundle, concepts: int, steps: int):
    from omnipersona.concepts.bank import ConceptBank
    from omnipersona.infer.engine import Persona
    from omnipersona.model.sampling import FlowSampling

    llm = bundle.config.llm
    bank = ConceptBank(concepts, llm.hidden_size, llm.vocab_size, 16, 16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        std = float(bundle.model.language_model.model.embed_tokens.weight.std())
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    names = [f"c{i}" for i in range(concepts)]
    return Persona(bundle, bank, names, image_size=64, sampling=FlowSampling(num_steps=steps)), names


def requests(task: str, names: list[str], images: list[np.ndarray], answer_tokens: int) -> list:
    from omnipersona.infer.requests import Edit, Generate, Understand

    if task == "recognition":
        return [Understand(f"Is <{n}> in this image?", image=im, max_new_tokens=1) for n, im in zip(names, images)]
    if task == "answer":
        return [Understand(f"What does <{n}> wear?", image=im, max_new_tokens=answer_tokens) for n, im in zip(names, images)]
    if task == "generate":
        return [Generate(n, f"a photo of <{n}> on the beach", replay=False, seed=i) for i, n in enumerate(names)]
    return [Edit(n, im, f"Put <{n}> on the beach.", replay=False, seed=i) for i, (n, im) in enumerate(zip(names, images))]


def one_at_a_time(persona, r):
    from omnipersona.infer.requests import Generate, Understand

    if isinstance(r, Understand):
        return persona.understand(r.question, image=r.image, concepts=r.concepts, max_new_tokens=r.max_new_tokens)
    if isinstance(r, Generate):
        return persona.generate(r.concept, r.prompt, replay=r.replay, size=r.size, seed=r.seed)
    return persona.edit(r.concept, r.image, r.instruction, replay=r.replay, seed=r.seed)


def difference(a, b) -> float:
    """How far two results of one request are apart (see the module docstring)."""
    if hasattr(a, "yes_probability"):
        if a.text != b.text:
            raise AssertionError(f"batched answer {b.text!r} differs from {a.text!r}")
        return abs(a.yes_probability - b.yes_probability)
    return float(np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max())


def measure(name: str, args) -> list[dict]:
    bundle, size, _ = load_config(name, Path(tempfile.gettempdir()) / "omnipersona-bench-models")
    persona, names = make_persona(bundle, args.requests, args.steps)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in names]
    clock = step_clock("cpu")
    persona.recognition_yes_probability_batch(list(zip(names, images)))  # prefill every concept's prompt
    rows = []
    for task in TASKS:
        batch = requests(task, names, images, args.answer_tokens)
        row = {"config": name, "task": task, "requests": len(batch), "rate": {}, "wall_s": {}}
        reference = None
        for mode in ["single"] + [f"B={b}" for b in args.batch_sizes]:
            t0, w0 = clock(), time.perf_counter()
            if mode == "single":
                results = [one_at_a_time(persona, r) for r in batch]
            else:
                persona.batch_size = int(mode[2:])
                results = persona.run_batch(batch)
            cpu, wall = clock() - t0, time.perf_counter() - w0
            row["rate"][mode], row["wall_s"][mode] = len(batch) / cpu, wall
            if mode == "B=1":
                reference = results
            elif reference is not None:
                row["max_diff"] = max(row.get("max_diff", 0.0), max(difference(a, b) for a, b in zip(reference, results)))
            print(f"{name} {task} {mode}: {len(batch) / cpu:.2f} requests/s (CPU {cpu:.2f} s, wall {wall:.2f} s)", flush=True)
        rows.append(row)
    return rows


class OneAtATime:
    """A persona without its batched methods: the harness then asks one case at a time."""

    def __init__(self, persona):
        self.persona = persona

    def __getattr__(self, name):
        if name.endswith("_batch"):
            raise AttributeError(name)
        return getattr(self.persona, name)


def measure_harness(name: str, args) -> dict:
    from omnipersona.concepts.bank import ConceptBank
    from omnipersona.concepts.init import init_concept
    from omnipersona.evaluation import EvalOptions, evaluate_concept
    from omnipersona.infer.engine import Persona
    from omnipersona.model.sampling import FlowSampling
    from omnipersona.world import make_concepts
    from omnipersona.world.eval_sets import eval_set_from_world

    bundle, size, _ = load_config(name, Path(tempfile.gettempdir()) / "omnipersona-bench-models")
    concept = make_concepts(2, seed=7)[0]
    llm = bundle.config.llm
    bank = ConceptBank(1, llm.hidden_size, llm.vocab_size, 16, 16)
    init_concept(bank, 0, bundle, concept.class_word, strategy="class_word")
    eval_set = eval_set_from_world(concept, EvalOptions(image_size=size))
    pixels = lambda images: np.stack([np.asarray(im, dtype=np.float64).reshape(-1)[:512] for im in images])  # noqa: E731
    clock, row = step_clock("cpu"), {"config": name}
    for mode, wrap in (("one_at_a_time", OneAtATime), ("batched", lambda p: p)):
        persona = Persona(bundle, bank, [concept.name], image_size=size, sampling=FlowSampling(num_steps=args.steps))
        t0 = clock()
        row[mode] = evaluate_concept(wrap(persona), eval_set, extractors={"pixel_cosine": pixels})
        row[f"{mode}_cpu_s"] = clock() - t0
        print(f"{name} harness {mode}: CPU {row[f'{mode}_cpu_s']:.2f} s", flush=True)
    row["metrics_equal"] = row["one_at_a_time"] == row["batched"]
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,small", help=f"comma list of {sorted(CONFIGS)}")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--requests", type=int, default=16, help="concepts loaded, one request each per task")
    p.add_argument("--steps", type=int, default=10, help="Euler steps of generation and editing")
    p.add_argument("--answer-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--harness-only", action="store_true", help="only the evaluate_concept table")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if 1 not in args.batch_sizes:
        raise SystemExit("--batch-sizes must include 1 (the ratios are against it)")
    set_threads(args.threads)
    configs = [name for name in args.configs.split(",") if name]
    results = [] if args.harness_only else [row for name in configs for row in measure(name, args)]
    harness = [measure_harness(name, args) for name in configs]
    modes = ["single"] + [f"B={b}" for b in args.batch_sizes]
    table = []
    for r in results:
        base = r["rate"]["B=1"]
        table.append([r["config"], r["task"]] + [f"{r['rate'][m]:.2f} ({r['rate'][m] / base:.2f}x)" for m in modes]
                     + [f"{r.get('max_diff', 0.0):.1e}"])
    print()
    if table:
        print(markdown_table(["config", "task"] + [f"{m} req/s (vs B=1)" for m in modes] + ["max diff"], table))
        print()
    print(markdown_table(["config", "evaluate_concept, one at a time (CPU s)", "batched (CPU s)", "speed-up", "metrics equal"],
                         [[h["config"], f"{h['one_at_a_time_cpu_s']:.2f}", f"{h['batched_cpu_s']:.2f}",
                           f"{h['one_at_a_time_cpu_s'] / h['batched_cpu_s']:.2f}x", h["metrics_equal"]] for h in harness]))
    print()
    return print_result("batched_inference", {"machine": machine(), "args": vars(args), "rows": results, "harness": harness})


if __name__ == "__main__":
    main()
