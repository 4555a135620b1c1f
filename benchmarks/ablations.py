"""OmniPersona vs its ablations on held-out world concepts: the table of docs/evaluation.md.

    python benchmarks/ablations.py                 # ~12 min on 2 CPU cores; builds / reuses the cached world base and probe

Rows (same concepts, seeds and evaluation for all):
    untrained tokens   concept tokens initialised (image features / class word), never trained
    OmniPersona        decoupled tokens, knowledge replay, editing data
    shared tokens      one token set on the understanding expert (TrainConfig(mode="shared"))
    no replay          OmniPersona's tokens, generation / editing from the raw request
    no editing data    decoupled tokens trained without the edit examples
Every concept of a row trains in one pack (packing is exact: see omnipersona/objectives.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnipersona.concepts.bank import ConceptBank  # noqa: E402
from omnipersona.infer.engine import Persona  # noqa: E402
from omnipersona.model.sampling import FlowSampling  # noqa: E402
from omnipersona.pretrain import PretrainConfig, ensure_world_base  # noqa: E402
from omnipersona.pretrain.world_concepts import concept_pool, init_world_concept  # noqa: E402
from omnipersona.model.checkpoint import load_bagel  # noqa: E402
from omnipersona.training import TrainConfig, train_pack  # noqa: E402
from omnipersona.world import make_concepts  # noqa: E402
from pipelines.evaluate.gate import Gate  # noqa: E402

# Bounds for concepts trained on the world base with the default recipe, chosen on the dev split
# (5 of 6 OmniPersona concepts pass there, 1 of 6 with untrained tokens); on the test split of
# docs/evaluation.md 3 of 6 OmniPersona concepts pass and none with untrained tokens.
WORLD_BASE_GATE = Gate(minimums={"recognition_accuracy": 0.65, "text_qa_accuracy": 0.4, "vqa_accuracy": 0.6})
from omnipersona.evaluation import EvalOptions, aggregate, evaluate_concept  # noqa: E402
from omnipersona.pretrain.probe import ProbeConfig, ensure_probe  # noqa: E402
from omnipersona.world.eval_sets import eval_set_from_world  # noqa: E402

# dev concepts tuned the recipe. "dev2" (seed 202) was the test split until 2026-11-30, but its tables
# were recorded while the recipe was still changing, so it counts as a second dev split now. "test"
# (seed 20261130) was committed before anything ran on it and is run once, with the recipe frozen.
SPLIT_SEEDS = {"dev": 101, "dev2": 202, "test": 20261130}
ALL_TASKS = ("recognition", "vqa", "text_qa", "t2i", "edit")
COLUMNS = (
    ("recognition_accuracy", "Rec."),
    ("text_qa_accuracy", "Text QA"),
    ("vqa_accuracy", "VQA"),
    ("generation_probe", "Gen. probe"),
    ("clip_i", "CLIP-I*"),
    ("parg", "PARG"),
    ("edit_score", "Edit"),
)


def train_config(args, mode: str = "decoupled") -> TrainConfig:
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, mode=mode, seed=args.seed,
        num_und_tokens=16, num_gen_tokens=16, vit_size=args.image_size, vae_size=args.image_size,
        lambda_img=args.lambda_img, lambda_edit=args.lambda_img,
    )


def personalise(bundle, concepts, cfg: TrainConfig, tasks, image_size: int, train: bool) -> ConceptBank:
    llm = bundle.config.llm
    bank = ConceptBank(len(concepts), llm.hidden_size, llm.vocab_size, cfg.num_und_tokens, cfg.num_gen_tokens, mode=cfg.mode)
    pools = [concept_pool(c, slot, size=image_size, tasks=tasks) for slot, c in enumerate(concepts)]
    for slot, c in enumerate(concepts):
        init_world_concept(bank, slot, bundle, c, size=image_size, seed=cfg.seed + slot)
    if train:
        train_pack(bundle, bank, pools, cfg)
    return bank


def evaluate_row(bundle, bank, concepts, eval_sets, probe, args, replay: bool) -> dict[str, dict[str, float]]:
    persona = Persona(bundle, bank, [c.name for c in concepts], image_size=args.image_size,
                      sampling=FlowSampling(num_steps=args.sampling_steps, seed=args.seed), guide_concept=args.guide_concept,
                      replay_appearance=args.replay_appearance)
    return {c.name: evaluate_concept(persona, es, probe, replay=replay) for c, es in zip(concepts, eval_sets)}


def format_table(rows: dict[str, dict[str, float]], timings: dict[str, float], gate_passes: dict[str, str]) -> str:
    header = "| Row | " + " | ".join(title for _, title in COLUMNS) + " | gate | time (s) |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, metrics in rows.items():
        cells = [f"{metrics.get(key, float('nan')):.3f}" for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gate_passes[name]} | {timings.get(name, 0):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="test")
    ap.add_argument("--concepts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--lambda-img", type=float, default=1.0)
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay-appearance", action=argparse.BooleanOptionalAction, default=False,
                    help="knowledge replay also rewrites requests whose question is the concept's appearance")
    ap.add_argument("--guide-concept", action=argparse.BooleanOptionalAction, default=True,
                    help="classifier-free guidance also towards the concept's tokens (Persona(guide_concept=...))")
    ap.add_argument("--rows", default="untrained,omnipersona,shared,no_replay,no_edit")
    ap.add_argument("--base", default=None, help="a BAGEL checkpoint folder (default: the cached world base)")
    ap.add_argument("--json", default=None, help="also write the per-concept metrics here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()

    base = args.base or str(ensure_world_base(PretrainConfig()))
    bundle = load_bagel(base)
    args.image_size = bundle.config.vit.image_size
    probe = ensure_probe(ProbeConfig(image_size=args.image_size))
    concepts = make_concepts(args.concepts, seed=SPLIT_SEEDS[args.split])
    eval_sets = [eval_set_from_world(c, EvalOptions(image_size=args.image_size)) for c in concepts]
    print(f"base {base}\nconcepts ({args.split}): {', '.join(c.name for c in concepts)}; setup {time.time() - start:.0f}s", flush=True)

    wanted = args.rows.split(",")
    per_row: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {}
    banks: dict[str, ConceptBank] = {}
    plan = [
        ("untrained", "untrained tokens", "decoupled", ALL_TASKS, False, True),
        ("omnipersona", "OmniPersona", "decoupled", ALL_TASKS, True, True),
        ("shared", "shared tokens", "shared", ALL_TASKS, True, True),
        ("no_replay", "no replay", "decoupled", ALL_TASKS, True, False),
        ("no_edit", "no editing data", "decoupled", tuple(t for t in ALL_TASKS if t != "edit"), True, True),
    ]
    for key, title, mode, tasks, train, replay in plan:
        if key not in wanted:
            continue
        t0 = time.time()
        cfg = train_config(args, mode)
        bank_key = f"{mode}|{','.join(tasks)}|{train}"
        if bank_key not in banks:  # "no replay" reuses OmniPersona's tokens
            torch.manual_seed(args.seed)
            banks[bank_key] = personalise(bundle, concepts, cfg, tasks, args.image_size, train)
        t1 = time.time()
        per_row[title] = evaluate_row(bundle, banks[bank_key], concepts, eval_sets, probe, args, replay)
        timings[title] = time.time() - t0
        summary = aggregate(per_row[title])
        print(f"{title}: train {t1 - t0:.0f}s, eval {time.time() - t1:.0f}s  "
              + " ".join(f"{k}={summary.get(k, float('nan')):.3f}" for k, _ in COLUMNS), flush=True)

    table = {name: aggregate(m) for name, m in per_row.items()}
    # Concepts of each row that pass the world base's promotion gate (pipelines.evaluate.gate).
    gate_passes = {name: f"{sum(WORLD_BASE_GATE.evaluate(m).passed for m in pc.values())}/{len(pc)}" for name, pc in per_row.items()}
    print()
    print(format_table(table, timings, gate_passes))
    print(f"\n{len(concepts)} held-out concepts ({args.split} split, seed {SPLIT_SEEDS[args.split]}), "
          f"{args.steps} steps x batch {args.batch_size} per concept, lr {args.lr}; total wall time {time.time() - start:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "table": table, "per_concept": per_row, "timings": timings, "gate_passes": gate_passes}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
