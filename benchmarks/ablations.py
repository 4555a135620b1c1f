"""OmniPersona vs its ablations on held-out world concepts: the table of docs/evaluation.md.

    python benchmarks/ablations.py                 # the test split, 16 concepts, every row (42 min on 2 shared CPU cores)
    python benchmarks/ablations.py --split dev --concepts 6 --rows untrained,omnipersona,noop_edit

Rows (same concepts, seeds and evaluation for all):
    untrained tokens   concept tokens initialised (image features / class word), never trained
    text profile       no concept tokens: the concept's facts written before each request, the concept
                       named as a plain word, no training (the paper's "BAGEL + text prompt")
    untrained tokens + text profile   the same facts beside the untrained tokens (naming the identifier)
    no-op edit         the edit returns its source unchanged: the Edit column's floor (other columns "-")
    OmniPersona        decoupled tokens, knowledge replay, editing data
    tokens + text profile   OmniPersona's trained tokens with the text profile in the prompt too
    shared tokens      one token set on the understanding expert (TrainConfig(mode="shared"))
    no replay          OmniPersona's tokens, generation / editing from the raw request
    no editing data    decoupled tokens trained without the edit examples
Every concept of a row trains in one pack (packing is exact: see omnipersona/objectives.py).
Each cell is the mean over concepts and its 95% bootstrap interval (concepts resampled with
replacement, 2000 resamples, seeded); a second table gives each row's paired difference to
OmniPersona (the same resampled concepts for both rows).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
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
# (5 of 6 OmniPersona concepts passed there on the first build, 1 of 6 with untrained tokens); on the
# test split of docs/evaluation.md 5 of 16 OmniPersona concepts pass and none with untrained tokens.
WORLD_BASE_GATE = Gate(minimums={"recognition_accuracy": 0.65, "text_qa_accuracy": 0.4, "vqa_accuracy": 0.6})
from omnipersona.evaluation import EvalOptions, aggregate, bootstrap_interval, evaluate_concept, unchanged_edit_metrics  # noqa: E402
from omnipersona.pretrain.probe import ProbeConfig, ensure_probe  # noqa: E402
from omnipersona.world.eval_sets import eval_set_from_world  # noqa: E402

# dev concepts tuned the recipe. "dev2" (seed 202) was the test split until 2026-11-30, but its tables
# were recorded while the recipe was still changing, so it counts as a second dev split now. "test"
# (seed 20261130) was committed before anything ran on it and is run once, with the recipe frozen.
SPLIT_SEEDS = {"dev": 101, "dev2": 202, "test": 20261130}
ALL_TASKS = ("recognition", "vqa", "text_qa", "t2i", "edit")
NO_EDIT_TASKS = tuple(t for t in ALL_TASKS if t != "edit")


@dataclass(frozen=True)
class Row:
    key: str  # --rows name
    title: str
    mode: str = "decoupled"
    tasks: tuple[str, ...] = ALL_TASKS
    train: bool = True
    replay: bool = True
    profile: bool = False  # the concept's facts in its prompt (text_profile)
    tokens: bool = True  # False: no concept tokens, the concept named as a plain word (Persona(plain_names=True))
    noop: bool = False  # no model: every edit returns its source


ROWS = (
    Row("untrained", "untrained tokens", train=False),
    Row("text_profile", "text profile", train=False, profile=True, tokens=False),
    Row("untrained_profile", "untrained tokens + text profile", train=False, profile=True),
    Row("noop_edit", "no-op edit", train=False, noop=True),
    Row("omnipersona", "OmniPersona"),
    Row("tokens_profile", "tokens + text profile", profile=True),
    Row("shared", "shared tokens", mode="shared"),
    Row("no_replay", "no replay", replay=False),
    Row("no_edit", "no editing data", tasks=NO_EDIT_TASKS),
)
REFERENCE = "OmniPersona"  # the row the paired differences are taken against
BOOTSTRAP = {"resamples": 2000, "level": 0.95, "seed": 0}


def text_profile(concept) -> str:
    """Every fact of the concept (its class is the shape: "a teal star") in the form the world base
    read in pretraining ("maeve is a teal star. maeve is striped. ... maeve's hobby is ...",
    `omnipersona.pretrain.tasks._context`), naming it `<maeve>` as the eval set's requests do: the
    concept's identifier beside tokens, the plain word "maeve" with `Persona(plain_names=True)`."""
    return " ".join(concept.facts(subject=f"<{concept.name}>"))
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


def personalise(bundle, concepts, cfg: TrainConfig, tasks, image_size: int, train: bool, edits: int = 3) -> ConceptBank:
    llm = bundle.config.llm
    bank = ConceptBank(len(concepts), llm.hidden_size, llm.vocab_size, cfg.num_und_tokens, cfg.num_gen_tokens, mode=cfg.mode)
    pools = [concept_pool(c, slot, size=image_size, tasks=tasks, edits=edits) for slot, c in enumerate(concepts)]
    for slot, c in enumerate(concepts):
        init_world_concept(bank, slot, bundle, c, size=image_size, seed=cfg.seed + slot)
    if train:
        train_pack(bundle, bank, pools, cfg)
    return bank


def evaluate_row(bundle, bank, concepts, eval_sets, probe, args, replay: bool, profile: bool = False,
                 tokens: bool = True) -> dict[str, dict[str, float]]:
    persona = Persona(bundle, bank, [c.name for c in concepts], image_size=args.image_size,
                      sampling=FlowSampling(num_steps=args.sampling_steps, seed=args.seed), guide_concept=args.guide_concept,
                      replay_appearance=args.replay_appearance,
                      profiles={c.name: text_profile(c) for c in concepts} if profile else None, plain_names=not tokens)
    return {c.name: evaluate_concept(persona, es, probe, replay=replay) for c, es in zip(concepts, eval_sets)}


EDIT_PARTS = (("edit_applied", "applied"), ("edit_kept", "kept"), ("edit_score", "Edit"))


def intervals(per_concept: dict[str, dict[str, float]], columns=COLUMNS) -> dict[str, tuple[float, float, float]]:
    """(mean, lo, hi) of every column a row reports (a column no concept reports is left out)."""
    out = {}
    for key, _ in columns:
        values = [m[key] for m in per_concept.values() if key in m]
        if values:
            out[key] = bootstrap_interval(values, **BOOTSTRAP)
    return out


def paired_differences(per_row: dict[str, dict[str, dict[str, float]]], reference: str = REFERENCE,
                       columns=COLUMNS) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Each row minus the reference row, concept by concept, with bootstrap intervals of the mean
    difference: resampling pairs removes the spread that concepts share between rows."""
    if reference not in per_row:
        return {}
    ref = per_row[reference]
    out = {}
    for name, pc in per_row.items():
        if name == reference:
            continue
        out[name] = {}
        for key, _ in columns:
            diffs = [pc[c][key] - ref[c][key] for c in pc if key in pc[c] and key in ref.get(c, {})]
            if diffs:
                out[name][key] = bootstrap_interval(diffs, **BOOTSTRAP)
    return out


def _cell(interval: tuple[float, float, float] | None, signed: bool = False) -> str:
    if interval is None:
        return "-"
    m, lo, hi = interval
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(m)} [{f.format(lo)}, {f.format(hi)}]"


def format_table(rows: dict[str, dict[str, tuple[float, float, float]]], timings: dict[str, float], gate_passes: dict[str, str]) -> str:
    """One line per row: "mean [lo, hi]" per column ("-": the row does not measure it)."""
    header = "| Row | " + " | ".join(title for _, title in COLUMNS) + " | gate | time (s) |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, cols in rows.items():
        cells = [_cell(cols.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gate_passes.get(name, '-')} | {timings.get(name, 0):.0f} |")
    return "\n".join(lines)


def format_differences(diffs: dict[str, dict[str, tuple[float, float, float]]], reference: str = REFERENCE, columns=COLUMNS) -> str:
    header = f"| Row - {reference} | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, cols in diffs.items():
        if cols:
            lines.append(f"| {name} | " + " | ".join(_cell(cols.get(key), signed=True) for key, _ in columns) + " |")
    return "\n".join(lines)


def edit_breakdown(per_row: dict[str, dict[str, dict[str, float]]]) -> str:
    """Edit split into its two halves (applied: the instruction happened; kept: what should stay
    did), and each row's paired Edit difference to the no-op edit, the score of changing nothing."""
    lines = ["| Row | " + " | ".join(t for _, t in EDIT_PARTS) + " | Edit - no-op edit |", "|" + "---|" * (len(EDIT_PARTS) + 2)]
    floor = paired_differences(per_row, "no-op edit", EDIT_PARTS[-1:]) if "no-op edit" in per_row else {}
    for name, pc in per_row.items():
        cols = intervals(pc, EDIT_PARTS)
        if cols:
            lines.append(f"| {name} | " + " | ".join(_cell(cols.get(k)) for k, _ in EDIT_PARTS)
                         + f" | {_cell(floor.get(name, {}).get('edit_score'), signed=True)} |")
    return "\n".join(lines)


def print_tables(per_row, timings, gate_passes) -> None:
    print(format_table({n: intervals(pc) for n, pc in per_row.items()}, timings, gate_passes))
    diffs = paired_differences(per_row)
    if diffs:
        print()
        print(format_differences(diffs))
    if any(intervals(pc, EDIT_PARTS) for pc in per_row.values()):
        print()
        print(edit_breakdown(per_row))


def _merged_by_split(runs: list[dict]) -> list[dict]:
    """Saved runs of one split and the same concepts as one run with all their rows: a split's rows
    may run as several processes (--rows ...), each bank seeded alike, to use more than one core."""
    by_split: dict[str, dict] = {}
    for r in runs:
        split = r["args"]["split"]
        if split not in by_split:
            by_split[split] = {**r, "per_concept": dict(r["per_concept"]), "timings": dict(r["timings"]), "gate_passes": dict(r["gate_passes"])}
            continue
        into = by_split[split]
        twice = sorted(set(into["per_concept"]) & set(r["per_concept"]))
        if r["concepts"] != into["concepts"] or twice:
            raise SystemExit(f"--tables: two runs of split {split} with other concepts or the same rows {twice}")
        for key in ("per_concept", "timings", "gate_passes"):
            into[key].update(r[key])
    return list(by_split.values())


def pooled(paths: list[str]) -> tuple[dict, dict, dict, list[str]]:
    """The rows of saved runs (--json files) as one run. Runs of the same split join their rows;
    runs of different splits pool their concepts, named split/name, so the same name drawn by two
    splits stays two concepts. A row missing from a split is left out."""
    runs = _merged_by_split([json.loads(Path(p).read_text()) for p in paths])
    titles = [row.title for row in ROWS if all(row.title in r["per_concept"] for r in runs)]
    per_row = {t: {f"{r['args']['split']}/{c}": m for r in runs for c, m in r["per_concept"][t].items()} for t in titles}
    timings = {t: sum(r["timings"].get(t, 0) for r in runs) for t in titles}
    gates = {}
    for t in titles:
        if all(t in r["gate_passes"] for r in runs):
            passed = [tuple(map(int, r["gate_passes"][t].split("/"))) for r in runs]
            gates[t] = f"{sum(a for a, _ in passed)}/{sum(b for _, b in passed)}"
    splits = [f"{r['args']['split']} ({len(r['concepts'])} concepts, seed {SPLIT_SEEDS[r['args']['split']]})" for r in runs]
    return per_row, timings, gates, splits


def parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--rows", default=",".join(r.key for r in ROWS), help="any of: " + ", ".join(r.key for r in ROWS))
    ap.add_argument("--base", default=None, help="a BAGEL checkpoint folder (default: the cached world base)")
    ap.add_argument("--json", default=None, help="also write the per-concept metrics here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--edits", type=int, default=3,
                    help="edit triplets per concept in training (cycling remove / background / accessory); the recipe's is 3")
    ap.add_argument("--tables", nargs="+", default=None, metavar="JSON",
                    help="run nothing: print the tables of saved --json runs (several: their concepts pooled)")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.tables:
        per_row, timings, gates, splits = pooled(args.tables)
        print("concepts of " + ", ".join(splits))
        print_tables(per_row, timings, gates)
        return 0
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
    unknown = sorted(set(wanted) - {r.key for r in ROWS})
    if unknown:
        ap.error(f"unknown rows {unknown}")
    per_row: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {}
    banks: dict[str, ConceptBank] = {}
    gate_passes: dict[str, str] = {}

    def report() -> dict:
        # Written after every row, so a run stopped part-way keeps what it measured.
        table = {name: intervals(pc) for name, pc in per_row.items()}
        result = {"args": vars(args), "bootstrap": BOOTSTRAP, "concepts": [c.name for c in concepts],
                  "table": {n: {k: list(v) for k, v in cols.items()} for n, cols in table.items()},
                  "differences": {n: {k: list(v) for k, v in cols.items()} for n, cols in paired_differences(per_row).items()},
                  "per_concept": per_row, "timings": timings, "gate_passes": gate_passes}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return result

    for row in (r for r in ROWS if r.key in wanted):
        t0 = time.time()
        if row.noop:
            per_row[row.title] = {c.name: unchanged_edit_metrics(es, probe) for c, es in zip(concepts, eval_sets)}
            t1 = time.time()
        else:
            cfg = train_config(args, row.mode)
            bank_key = f"{row.mode}|{','.join(row.tasks)}|{row.train}"
            if bank_key not in banks:  # "no replay" and the profile rows reuse a bank trained (or not) for another row
                torch.manual_seed(args.seed)
                banks[bank_key] = personalise(bundle, concepts, cfg, row.tasks, args.image_size, row.train, args.edits)
            t1 = time.time()
            per_row[row.title] = evaluate_row(bundle, banks[bank_key], concepts, eval_sets, probe, args, row.replay, row.profile, row.tokens)
            # Concepts of the row that pass the world base's promotion gate (pipelines.evaluate.gate).
            gate_passes[row.title] = f"{sum(WORLD_BASE_GATE.evaluate(m).passed for m in per_row[row.title].values())}/{len(concepts)}"
        timings[row.title] = time.time() - t0
        summary = aggregate(per_row[row.title])
        print(f"{row.title}: train {t1 - t0:.0f}s, eval {time.time() - t1:.0f}s  "
              + " ".join(f"{k}={summary[k]:.3f}" for k, _ in COLUMNS if k in summary), flush=True)
        report()

    report()
    print()
    print_tables(per_row, timings, gate_passes)
    print(f"\n{len(concepts)} held-out concepts ({args.split} split, seed {SPLIT_SEEDS[args.split]}), "
          f"{args.steps} steps x batch {args.batch_size} per concept, lr {args.lr}; cells: mean [95% bootstrap interval over "
          f"concepts, {BOOTSTRAP['resamples']} resamples]; total wall time {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
