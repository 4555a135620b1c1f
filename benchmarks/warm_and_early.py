"""Warm start and early stopping, measured on world concepts of the dev split (issue 18).

    python benchmarks/warm_and_early.py            # (a) and (b), 8 concepts, 200 steps: ~14 min on 2 shared cores
    python benchmarks/warm_and_early.py --parts early --concepts 6 --steps 400 --min-deltas 0,0.01
                                                   # (b) at twice the recipe's steps, two min_delta values

Library level, on the shipped world base (`model.uri: world`), the recipe of benchmarks/ablations.py
(200 steps x batch 8, lr 0.02, 16 + 16 tokens, decoupled); all concepts of an arm train in one pack
(packing is exact: a concept's tokens do not depend on its pack). The dev split only (seed 101):
the test split is never used here.

(a) Warm start. The user's first upload is `--first-views` pictures: the champion trains on them
    from a fresh start for `--steps` steps. Then the user adds pictures (`--views` in all) and the
    concept is trained again, from the champion's tokens (warm, `train.warm_start`) and from a fresh
    start, evaluated every `--eval-every` steps: how many steps each needs to reach the champion's
    held-out metrics (recognition, text QA, VQA on the concept's eval set), per metric and for all
    three at once ("-": not within `--steps`).
(b) Early stopping. On the `--views` pictures, the fixed-step recipe (the fresh arm of (a) at
    `--steps`) against early stopping (`train.early_stopping`: check every `--check-every` steps,
    `--patience`, one arm per value of `--min-deltas`) on a held-out slice that neither training nor the eval set uses:
    the examples of 2 more views, one more look-alike and random negative and one more edit
    (`omnipersona.pretrain.world_concepts.concept_examples` with more of each, minus the training
    ones) — as a job's gate pictures are pictures the user uploaded but training does not see.
    Steps saved and every metric's change (understanding metrics and, with the world probe as
    judge, generation, PARG and edit), per concept and on average.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omnipersona.concepts.bank import ConceptBank  # noqa: E402
from omnipersona.concepts.samples import SampleBuilder  # noqa: E402
from omnipersona.evaluation import EvalOptions, aggregate, evaluate_concept  # noqa: E402
from omnipersona.infer.engine import Persona  # noqa: E402
from omnipersona.model.checkpoint import load_bagel  # noqa: E402
from omnipersona.model.sampling import FlowSampling  # noqa: E402
from omnipersona.pretrain.probe import ProbeConfig, ensure_probe  # noqa: E402
from omnipersona.pretrain.shipped import SHIPPED_BASE  # noqa: E402
from omnipersona.pretrain.world_concepts import concept_examples, init_world_concept  # noqa: E402
from omnipersona.training import (  # noqa: E402
    ConceptPool,
    EarlyStopper,
    PackModule,
    PackTrainer,
    StopRule,
    TorchEngine,
    TrainConfig,
    make_optimizer,
    train_pack,
)
from omnipersona.world import make_concepts  # noqa: E402
from omnipersona.world.eval_sets import eval_set_from_world  # noqa: E402

DEV_SEED = 101  # benchmarks/ablations.py's "dev" split
UNDERSTANDING = (("recognition_accuracy", "Rec."), ("text_qa_accuracy", "Text QA"), ("vqa_accuracy", "VQA"))
ALL_COLUMNS = (*UNDERSTANDING, ("generation_probe", "Gen. probe"), ("clip_i", "CLIP-I*"), ("parg", "PARG"),
               ("edit_score", "Edit"))


def recipe(args) -> TrainConfig:
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       num_und_tokens=16, num_gen_tokens=16, vit_size=args.size, vae_size=args.size)


def _key(ex) -> tuple:
    digest = hashlib.sha256()
    for image in (ex.image, ex.target):
        digest.update(b"-" if image is None else image.tobytes())
    return ex.task, ex.prompt, ex.answer, digest.hexdigest()


def pools_for(concepts, size: int, views: int) -> list[ConceptPool]:
    return [ConceptPool(f"world/{c.name}", concept_examples(c, slot, size=size, views=views)) for slot, c in enumerate(concepts)]


def heldout_pools(concepts, size: int, views: int) -> list[ConceptPool]:
    """Per concept, examples training (`views` views) never sees: 2 more views, one more look-alike and
    random negative, one more edit (the eval set's views, negatives and edits come from other streams)."""
    out = []
    for slot, c in enumerate(concepts):
        trained = {_key(ex) for ex in concept_examples(c, slot, size=size, views=views)}
        more = concept_examples(c, slot, size=size, views=views + 2, negatives=6, edits=4)
        out.append(ConceptPool(f"world/{c.name}", [ex for ex in more if _key(ex) not in trained]))
    return out


def fresh_bank(bundle, concepts, cfg: TrainConfig) -> ConceptBank:
    llm = bundle.config.llm
    bank = ConceptBank(len(concepts), llm.hidden_size, llm.vocab_size, cfg.num_und_tokens, cfg.num_gen_tokens, mode=cfg.mode)
    for slot, c in enumerate(concepts):
        init_world_concept(bank, slot, bundle, c, size=cfg.vit_size, seed=cfg.seed + slot)
    return bank


def evaluate(bundle, bank, concepts, eval_sets, args, probe=None) -> dict[str, dict[str, float]]:
    persona = Persona(bundle, bank, [c.name for c in concepts], image_size=args.size,
                      sampling=FlowSampling(num_steps=args.sampling_steps, seed=args.seed))
    return {c.name: evaluate_concept(persona, es, probe, replay=probe is not None) for c, es in zip(concepts, eval_sets)}


def understanding_only(es):
    return dataclasses.replace(es, generation_prompts=[], parg=[], edits=[])


def curve(bundle, bank, pools, concepts, eval_sets, cfg, args) -> dict[int, dict[str, dict[str, float]]]:
    """Train `bank` for cfg.steps, evaluating (understanding) at 0 and every `eval_every` steps."""
    bundle.model.freeze()
    trainer = PackTrainer(TorchEngine(PackModule(bundle, bank), *make_optimizer(bank, cfg)),
                          SampleBuilder(bundle, bank, cfg.vit_size, cfg.vae_size), cfg)
    trainer.start_pack(pools)
    out = {0: evaluate(bundle, bank, concepts, eval_sets, args)}
    for start in range(0, cfg.steps, args.eval_every):
        stop = min(cfg.steps, start + args.eval_every)
        trainer.train(pools, start, stop)
        out[stop] = evaluate(bundle, bank, concepts, eval_sets, args)
    return out


def steps_to_reach(trajectory: dict[int, dict[str, dict[str, float]]], target: dict[str, float], name: str,
                   metrics: list[str]) -> int | None:
    """The first evaluated step at which every metric in `metrics` is >= the champion's (None: never)."""
    for step in sorted(trajectory):
        m = trajectory[step][name]
        if all(m.get(k, -math.inf) >= target[k] - 1e-9 for k in metrics):
            return step
    return None


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--first-views", type=int, default=5, help="pictures of the first upload (the champion's)")
    ap.add_argument("--views", type=int, default=10, help="pictures after the user added some")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--check-every", type=int, default=25)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--min-deltas", default="0", help="early stopping's min_delta, one arm per comma-separated value")
    ap.add_argument("--parts", default="warm,early", help="warm: (a); early: (b)")
    ap.add_argument("--max-heldout", type=int, default=16)
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()

    bundle = load_bagel(str(SHIPPED_BASE))
    args.size = bundle.config.vit.image_size
    probe = ensure_probe(ProbeConfig(image_size=args.size))
    concepts = make_concepts(args.concepts, seed=DEV_SEED)
    full_sets = [eval_set_from_world(c, EvalOptions(image_size=args.size)) for c in concepts]
    quick_sets = [understanding_only(es) for es in full_sets]
    cfg = recipe(args)
    names = [c.name for c in concepts]
    und = [k for k, _ in UNDERSTANDING]
    print(f"dev split (seed {DEV_SEED}): {', '.join(names)}", flush=True)

    parts = args.parts.split(",")
    new_pools = pools_for(concepts, args.size, args.views)
    reach, champ, warm, fresh = {}, {}, {}, {}
    if "warm" in parts:
        champ, warm, fresh, reach, fresh_banked = warm_start_part(bundle, concepts, quick_sets, cfg, args, new_pools)
    else:
        torch.manual_seed(args.seed)
        fresh_banked = fresh_bank(bundle, concepts, cfg)
        t0 = time.time()
        train_pack(bundle, fresh_banked, new_pools, cfg)
        print(f"fixed-step arm: {time.time() - t0:.0f}s", flush=True)
    records, fixed_full, stop_full = {}, {}, {}
    if "early" in parts:
        records, fixed_full, stop_full = early_stopping_part(bundle, concepts, full_sets, cfg, args, new_pools, fresh_banked,
                                                             probe)
    print(f"\n{len(names)} dev concepts, {args.steps} steps x batch {args.batch_size}, lr {args.lr}; "
          f"total wall time {time.time() - t_start:.0f}s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "champion": champ, "warm": {str(k): v for k, v in warm.items()},
            "fresh": {str(k): v for k, v in fresh.items()}, "reach": reach, "fixed": fixed_full, "early_stop": stop_full,
            "stop_records": records}, indent=2))
    return 0


def warm_start_part(bundle, concepts, quick_sets, cfg, args, new_pools):
    names = [c.name for c in concepts]
    und = [k for k, _ in UNDERSTANDING]
    t0 = time.time()
    torch.manual_seed(args.seed)
    champion = fresh_bank(bundle, concepts, cfg)
    train_pack(bundle, champion, pools_for(concepts, args.size, args.first_views), cfg)
    champ = evaluate(bundle, champion, concepts, quick_sets, args)
    print(f"champion ({args.first_views} pictures, {args.steps} steps): {time.time() - t0:.0f}s", flush=True)
    warm_bank = fresh_bank(bundle, concepts, cfg)
    warm_bank.load_state_dict(champion.state_dict())
    t0 = time.time()
    warm = curve(bundle, warm_bank, new_pools, concepts, quick_sets, cfg, args)
    print(f"warm arm: {time.time() - t0:.0f}s", flush=True)
    torch.manual_seed(args.seed)
    fresh_banked = fresh_bank(bundle, concepts, cfg)
    t0 = time.time()
    fresh = curve(bundle, fresh_banked, new_pools, concepts, quick_sets, cfg, args)
    print(f"fresh arm: {time.time() - t0:.0f}s", flush=True)
    # Targets: the champion's metrics (the old version's: the warm start's tokens have them at step 0
    # by construction) and the metrics of a full retrain on the new pictures (fresh at --steps).
    retrain = {name: fresh[args.steps][name] for name in names}
    reach = {"warm": {}, "fresh": {}, "warm_to_retrain": {}}
    for name in names:
        for arm, traj, target in (("warm", warm, champ), ("fresh", fresh, champ), ("warm_to_retrain", warm, retrain)):
            for metrics in ([[k] for k in und] + [und]):
                label = "all" if len(metrics) > 1 else metrics[0]
                reach[arm].setdefault(label, []).append(steps_to_reach(traj, target[name], name, metrics))

    def summarise(values: list[int | None]) -> str:
        hit = [v for v in values if v is not None]
        mean = f"{sum(hit) / len(hit):.0f}" if hit else "-"
        return f"{mean} ({len(hit)}/{len(values)})"

    labels = [*und, "all"]
    lines = ["| start, target | " + " | ".join(f"steps to {'all three' if k == 'all' else k}" for k in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for arm, title in (("warm", "warm, to the champion's"), ("fresh", "fresh, to the champion's"),
                       ("warm_to_retrain", f"warm, to a full fresh retrain's ({args.steps} steps)")):
        lines.append(f"| {title} | " + " | ".join(summarise(reach[arm][k]) for k in labels) + " |")
    table_a = "\n".join(lines)
    per_concept_a = ["| concept | champion Rec./TextQA/VQA | warm: steps to all (Rec. at 0) | fresh: steps to all |",
                     "|---|---|---|---|"]
    for i, name in enumerate(names):
        c = champ[name]
        per_concept_a.append(f"| {name} | {c['recognition_accuracy']:.3f} / {c['text_qa_accuracy']:.3f} / {c['vqa_accuracy']:.3f} | "
                             f"{fmt(reach['warm']['all'][i])} ({warm[0][name]['recognition_accuracy']:.3f}) | {fmt(reach['fresh']['all'][i])} |")
    end = ["| after | " + " | ".join(t for _, t in UNDERSTANDING) + " |", "|---|" + "---|" * len(UNDERSTANDING)]
    for title, metrics in (("champion (first pictures)", champ), (f"warm, {args.steps} steps", warm[args.steps]),
                           (f"fresh, {args.steps} steps", fresh[args.steps])):
        mean = aggregate(metrics)
        end.append(f"| {title} | " + " | ".join(f"{mean.get(k, math.nan):.3f}" for k in und) + " |")
    print("\n(a) warm start: mean steps to reach the target's held-out metrics (in brackets: concepts that reach them "
          f"within {args.steps} steps; evaluated every {args.eval_every})\n" + table_a + "\n\n" + "\n".join(end)
          + "\n\n" + "\n".join(per_concept_a), flush=True)
    return champ, warm, fresh, reach, fresh_banked


def early_stopping_part(bundle, concepts, full_sets, cfg, args, new_pools, fixed_bank, probe):
    """(b): early stopping vs the fixed-step recipe (`fixed_bank`: trained `--steps` steps), one arm per min_delta."""
    names = [c.name for c in concepts]
    fixed_full = evaluate(bundle, fixed_bank, concepts, full_sets, args, probe)
    all_records, all_full = {}, {}
    for min_delta in [float(x) for x in args.min_deltas.split(",")]:
        records, stop_full = early_stopping_arm(bundle, concepts, full_sets, cfg, args, new_pools, probe, min_delta,
                                                fixed_full)
        all_records[str(min_delta)], all_full[str(min_delta)] = records, stop_full
    return all_records, fixed_full, all_full


def early_stopping_arm(bundle, concepts, full_sets, cfg, args, new_pools, probe, min_delta, fixed_full):
    names = [c.name for c in concepts]
    torch.manual_seed(args.seed)
    stop_bank = fresh_bank(bundle, concepts, cfg)
    stopper = EarlyStopper(StopRule(check_every=args.check_every, patience=args.patience, min_delta=min_delta,
                                    max_examples=args.max_heldout), len(concepts), args.steps)
    t1 = time.time()
    train_pack(bundle, stop_bank, new_pools, cfg, stopper=stopper, heldout=heldout_pools(concepts, args.size, args.views))
    t_stop = time.time() - t1
    stop_full = evaluate(bundle, stop_bank, concepts, full_sets, args, probe)
    print(f"\nearly stopping (min_delta {min_delta}): train {t_stop:.0f}s", flush=True)
    records = [c.summary(args.steps) for c in stopper.concepts]
    cols = [k for k, _ in ALL_COLUMNS]
    per_concept_b = ["| concept | stopped at | best check | steps saved | " + " | ".join(f"Δ {t}" for _, t in ALL_COLUMNS) + " |",
                     "|---|---|---|---|" + "---|" * len(cols)]
    for name, r in zip(names, records):
        deltas = [stop_full[name].get(k, math.nan) - fixed_full[name].get(k, math.nan) for k in cols]
        per_concept_b.append(f"| {name} | {fmt(r['stopped_at_step'])} | {fmt(r['best_step'])} | {r['steps_saved']} | "
                             + " | ".join(f"{d:+.3f}" for d in deltas) + " |")
    fixed_mean, stop_mean = aggregate(fixed_full), aggregate(stop_full)
    saved = sum(r["steps_saved"] for r in records)
    table_b = ["| recipe | concept-steps | " + " | ".join(t for _, t in ALL_COLUMNS) + " |", "|---|---|" + "---|" * len(cols),
               f"| fixed {args.steps} steps | {args.steps * len(names)} | " + " | ".join(f"{fixed_mean.get(k, math.nan):.3f}" for k in cols) + " |",
               f"| early stopping | {args.steps * len(names) - saved} | " + " | ".join(f"{stop_mean.get(k, math.nan):.3f}" for k in cols) + " |"]
    print(f"\n(b) early stopping (check every {args.check_every}, patience {args.patience}, min_delta {min_delta}) "
          f"vs the fixed-step recipe: {saved} of {args.steps * len(names)} concept-steps saved "
          f"({100 * saved / (args.steps * len(names)):.0f}%)\n" + "\n".join(table_b) + "\n\n" + "\n".join(per_concept_b),
          flush=True)
    return records, stop_full


if __name__ == "__main__":
    raise SystemExit(main())
