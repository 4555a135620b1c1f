"""Packing benchmark: concepts per hour of three ways to train many concepts, in ONE run.

    python -m benchmarks.packing                      # 128 concepts, 4 steps x batch 8, tiny BAGEL

Modes (same concepts, same data, same steps, same batch per concept, same thread count):
  (a) one process per concept, as the peers run it (a bash loop over names): a fresh Python
      process imports the stack, loads the base model, initialises one concept, trains it and
      saves its artifact. Measured on `--fresh-processes` concepts (default 8) run one after the
      other, and extrapolated per concept to all concepts (the table says so).
  (b) in-process sequential: the model is loaded once; then for each concept a bank of one,
      initialise, train, save.
  (c) packed: the model is loaded once; packs of P concepts train together in one bank (the
      product's `omnipersona.training.train_pack`), P = 8, 32, 128.
Every mode trains a pack (of 1 in (a) and (b)) as the train stage does: one `SampleBuilder` per
pack whose cache encodes each image's VAE posterior once (shared by the concept init and the
steps), then `train_pack`. All of that is timed.
Each mode writes real concept artifacts; the table also shows the largest difference of the
trained tokens against (b) — packing is exact, so it should be ~1e-6, not a speed/quality trade.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python benchmarks/packing.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table, print_result, set_threads, tiny_model_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- data and one pack
def write_pools(n: int, folder: Path, image_size: int, seed: int) -> list[Path]:
    """n generated concepts' training examples, one pickle per concept (what each mode reads)."""
    from omnipersona.pretrain.world_concepts import concept_examples
    from omnipersona.world import make_concepts

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for c in make_concepts(n, seed=seed):
        path = folder / f"{c.name}.pkl"
        examples = concept_examples(c, 0, size=image_size, views=6, negatives=3, edits=2)
        record = {"key": f"world/{c.name}", "class_word": c.class_word, "examples": examples}
        path.write_bytes(pickle.dumps(record))
        files.append(path)
    return files


def train_config(args):
    from omnipersona.training import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3, num_und_tokens=16, num_gen_tokens=16,
                       vit_size=args.image_size, vae_size=args.image_size)


PHASES = ("vae", "init", "steps", "io")  # CPU seconds of train_and_save, per phase


def train_and_save(bundle, pool_files: list[Path], cfg, out_dir: Path) -> dict:
    """Train the concepts of `pool_files` as ONE pack and write one artifact per concept.

    Returns this process's CPU seconds per phase: `vae` (the VAE posteriors of the pack's latent
    images, encoded once), `init` (the concepts' initial tokens), `steps` (train_pack's optimizer
    steps), `io` (reading the pools, writing the artifacts); and `encoded`, the images encoded.
    """
    from omnipersona.concepts.artifact import ConceptArtifact, ConceptManifest, config_hash
    from omnipersona.concepts.bank import ConceptBank
    from omnipersona.concepts.init import init_concept
    from omnipersona.concepts.samples import SampleBuilder
    from omnipersona.training import ConceptPool, pack_step_examples, train_pack

    clock, cpu = time.process_time, dict.fromkeys(PHASES, 0.0)
    t = clock()
    records = [pickle.loads(p.read_bytes()) for p in pool_files]
    pools = [ConceptPool(r["key"], r["examples"]) for r in records]
    llm = bundle.config.llm
    bank = ConceptBank(len(pools), llm.hidden_size, llm.vocab_size, cfg.num_und_tokens, cfg.num_gen_tokens, cfg.mode)
    cpu["io"] += clock() - t
    # As the train stage does: the pack's latent images are encoded once (the VAE posterior cache),
    # and the concept init reuses those posteriors; then the steps never run the VAE encoder.
    t = clock()
    builder = SampleBuilder(bundle, bank, cfg.vit_size, cfg.vae_size)
    encoded = builder.precompute(pack_step_examples(pools, 0, cfg.steps, cfg.batch_size, cfg.seed))
    cpu["vae"] += clock() - t
    t = clock()
    with torch.no_grad():
        for slot, (r, pool) in enumerate(zip(records, pools)):
            images = [ex.image for ex in pool.examples if ex.task == "recognition" and ex.answer == "Yes"][:4]
            seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}|{r['key']}".encode()).digest()[:6], "little")
            init_concept(bank, slot, bundle, r["class_word"], images, strategy=cfg.init, seed=seed, cache=builder.cache)
    cpu["init"] += clock() - t
    t = clock()
    train_pack(bundle, bank, pools, cfg, builder=builder)
    cpu["steps"] += clock() - t
    t = clock()
    recipe = config_hash(cfg)
    for slot, r in enumerate(records):
        tenant, concept = r["key"].split("/")
        manifest = ConceptManifest(tenant=tenant, concept=concept, display_name=concept, class_word=r["class_word"],
                                   training_config_hash=recipe, data_digest="bench", base_model_id=bundle.config.model_id,
                                   base_fingerprint=bundle.fingerprint)
        ConceptArtifact(**bank.concept_tensors(slot), manifest=manifest).save(out_dir / concept)
    cpu["io"] += clock() - t
    return {**cpu, "encoded": encoded}


# ----------------------------------------------------------------------------- the modes
def fresh_process(pool_file: Path, out_dir: Path, args) -> dict:
    """Mode (a) for one concept: a new interpreter does everything; returns its timings."""
    cmd = [sys.executable, "-m", "benchmarks.packing", "--worker", str(pool_file), "--out", str(out_dir),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
           "--threads", str(args.threads), "--model", str(args.model)]
    before = _children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - before
    if done.returncode != 0:
        raise RuntimeError(f"fresh process failed:\n{done.stderr[-3000:]}")
    inner = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "cpu": cpu, **inner, "startup_and_imports": cpu - inner["load"] - inner["train_and_save"]}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worker_main(args) -> None:
    """Body of one fresh process (mode a): load the model, train one concept, save it."""
    set_threads(args.threads)
    from omnipersona.model.checkpoint import load_bagel

    t0 = time.process_time()
    bundle = load_bagel(str(args.model))
    t1 = time.process_time()
    phases = train_and_save(bundle, [Path(args.worker)], train_config(args), Path(args.out))
    t2 = time.process_time()
    print(json.dumps({"load": t1 - t0, "train_and_save": t2 - t1, "phases": phases}), flush=True)


def in_process(pool_files: list[Path], pack_size: int, out_dir: Path, args) -> tuple[float, float, dict]:
    """Modes (b) (pack_size 1) and (c): the model loaded once, packs trained one after the other.

    Returns (wall seconds, CPU seconds of this process, summed phases of `train_and_save`)."""
    from omnipersona.model.checkpoint import load_bagel

    cfg = train_config(args)
    t0, c0 = time.perf_counter(), time.process_time()
    bundle = load_bagel(str(args.model))
    phases: dict = {}
    for i in range(0, len(pool_files), pack_size):
        for k, v in train_and_save(bundle, pool_files[i : i + pack_size], cfg, out_dir).items():
            phases[k] = phases.get(k, 0) + v
    return time.perf_counter() - t0, time.process_time() - c0, phases


def phase_note(phases: dict, n: int) -> str:
    parts = ", ".join(f"{k} {phases[k] / n:.3f}" for k in PHASES)
    return f"CPU s / concept: {parts}; {phases['encoded'] / n:.1f} images VAE-encoded / concept"


def max_token_diff(dir_a: Path, dir_b: Path, names: list[str]) -> float:
    from omnipersona.concepts.artifact import TENSOR_NAMES, ConceptArtifact

    worst = 0.0
    for name in names:
        a, b = ConceptArtifact.load(dir_a / name), ConceptArtifact.load(dir_b / name)
        for t in TENSOR_NAMES:
            worst = max(worst, float((getattr(a, t) - getattr(b, t)).abs().max()))
    return worst


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per concept (the same in every mode)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per concept per step (the paper's 8)")
    p.add_argument("--image-size", type=int, default=64, help="ViT and VAE input side (the demo's 64)")
    p.add_argument("--packs", default="8,32,128", help="pack sizes P of mode (c)")
    p.add_argument("--fresh-processes", type=int, default=8, help="concepts measured in mode (a), then extrapolated")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every mode")
    p.add_argument("--model", default=None, help="tiny BAGEL folder (default: built once into a cache)")
    p.add_argument("--seed", type=int, default=5, help="seed of the generated concepts")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (pools, artifacts)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return {}
    set_threads(args.threads)
    args.model = tiny_model_dir(args.model)
    packs = [int(p) for p in args.packs.split(",") if p]
    work = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    files = write_pools(args.concepts, work / "pools", args.image_size, args.seed)
    names = [f.stem for f in files]
    print(f"[packing] {args.concepts} concepts, {args.steps} steps x batch {args.batch_size}, image {args.image_size}, "
          f"{args.threads} thread(s); work folder {work}", flush=True)

    runs = []  # (label, concepts timed, wall s, CPU s, note)
    subset = files[: args.fresh_processes]
    per = []
    for i, f in enumerate(subset):
        per.append(fresh_process(f, work / "a", args))
        print(f"[packing] (a) process {i + 1}/{len(subset)}: {per[-1]['wall']:.2f}s wall, {per[-1]['cpu']:.2f}s CPU", flush=True)
    breakdown = {k: sum(r[k] for r in per) / len(per) for k in ("startup_and_imports", "load", "train_and_save")}
    a_phases = {k: sum(r["phases"][k] for r in per) for k in (*PHASES, "encoded")}
    runs.append(("(a) process per concept", len(subset), sum(r["wall"] for r in per), sum(r["cpu"] for r in per),
                 f"timed on {len(subset)} processes, rate extrapolated to all; CPU s per process: start+imports "
                 f"{breakdown['startup_and_imports']:.2f}, load {breakdown['load']:.2f}, train+save {breakdown['train_and_save']:.2f}"))

    wall, cpu, phases = in_process(files, 1, work / "b", args)
    print(f"[packing] (b) sequential: {wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)
    runs.append(("(b) in-process sequential", len(files), wall, cpu, f"model loaded once; {phase_note(phases, len(files))}"))
    all_phases = {"(a) process per concept": a_phases, "(b) in-process sequential": phases}
    for P in packs:
        wall, cpu, phases = in_process(files, P, work / f"c{P}", args)
        print(f"[packing] (c) P={P}: {wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)
        runs.append((f"(c) packed P={P}", len(files), wall, cpu, f"{-(-len(files) // P)} pack(s); {phase_note(phases, len(files))}"))
        all_phases[f"(c) packed P={P}"] = phases

    # Rates come from CPU time: the machine is shared, and with one thread CPU time is what a
    # dedicated core would take (wall time is shown too).
    per_a, per_b = runs[0][3] / runs[0][1], runs[1][3] / runs[1][1]
    diffs = {"(a) process per concept": max_token_diff(work / "a", work / "b", names[: len(subset)])}
    for P in packs:
        diffs[f"(c) packed P={P}"] = max_token_diff(work / f"c{P}", work / "b", names)
    rows, result_rows = [], []
    for label, n, wall, cpu, note in runs:
        per_concept = cpu / n
        cph = 3600 / per_concept
        diff = diffs.get(label, 0.0)
        rows.append([label, n, round(wall, 1), round(cpu, 1), round(per_concept, 3), round(cph), f"{per_a / per_concept:.1f}x",
                     f"{per_b / per_concept:.2f}x", f"{diff:.1e}", note])
        result_rows.append({"mode": label, "concepts_timed": n, "wall_s": wall, "cpu_s": cpu, "cpu_s_per_concept": per_concept,
                            "concepts_per_hour": cph, "vs_a": per_a / per_concept, "vs_b": per_b / per_concept,
                            "max_token_diff_vs_b": diff, "note": note, "phases_cpu_s": all_phases.get(label)})
    print()
    print(markdown_table(["mode", "concepts timed", "wall (s)", "CPU (s)", "CPU s / concept", "concepts / hour", "vs (a)",
                          "vs (b)", "max abs(tokens - (b))", "note"], rows))
    print()
    payload = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items() if k not in ("worker", "out", "keep_work")},
               "rows": result_rows, "fresh_process_cpu_breakdown_s": breakdown}
    print_result("packing", payload)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return payload


if __name__ == "__main__":
    main()
