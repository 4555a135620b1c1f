"""`omnipersona demo`: the whole product on one machine, with nothing to set up, and what it does to a concept.

Generates a small set of personal concepts of the procedural world (one upload broken on purpose),
writes them as user uploads, held-out evaluation sets (other views, look-alikes, private facts, PARG
requests) and a shared negative pool to a local folder, and runs the real job on an embedded
default: local Ray, a local folder as the object store, a sqlite MLflow, and the world base shipped
with the package (`--model world`, 32-pixel pictures; `--model tiny` runs the random tiny BAGEL,
which proves the pipeline only). Then, for each registered concept, it draws a contact sheet of the
untrained tokens (BEFORE: the bank the trainer started from) against the champion (AFTER)
(`jobs/demo_sheets.py`) and prints held-out recognition before vs after.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import yaml

from jobs.logs import log_format

log = logging.getLogger("omnipersona.demo")


# What each base needs: the world base sees 32-pixel pictures and learns to recognise a concept from
# ~200 steps x 8 recognition examples at lr 0.02 with 16 + 16 tokens (tests/unit/test_world_learning.py);
# the job mixes five tasks, so 400 steps here. The random tiny model only has to run.
BASES = {
    "world": {"size": 32, "steps": 400, "batch_size": 8, "lr": 0.02, "tokens": 16, "samples_per_task": 8,
              # init "image" encodes the concept's pictures at 64 pixels (omnipersona.concepts.init.init_concept),
              # which the 32-pixel world base cannot take: start from the class word instead.
              "init": "class_word"},
    "tiny": {"size": 64, "steps": 30, "batch_size": 4, "lr": 0.02, "tokens": 8, "samples_per_task": 4, "init": "image"},
}


EVAL_VIEWS = 6  # held-out views and look-alikes per concept: the job's harness and the before/after summary score them


def base_settings(model: str) -> dict:
    """The demo's sizes and recipe for `model`: 'world', 'tiny', or any other base folder (as 'tiny')."""
    return BASES.get(model, BASES["tiny"])


def demo_config(root: Path, model: str = "world", steps: int | None = None) -> dict:
    base = base_settings(model)
    size = base["size"]
    return {
        "job_id": "demo",
        "ingest": {"uploads_uri": str(root / "uploads"), "negatives_uri": str(root / "negatives"),
                   "vit_size": size, "vae_size": size, "epochs": 2, "samples_per_task": base["samples_per_task"]},
        "model": {"uri": model, "tiny_cache": str(root / "models" / "tiny-bagel")},
        "train": {
            "recipe": {"steps": steps or base["steps"], "batch_size": base["batch_size"], "lr": base["lr"],
                       "num_und_tokens": base["tokens"], "num_gen_tokens": base["tokens"], "vit_size": size, "vae_size": size,
                       "init": base["init"]},
            "deepspeed": {"zero_stage": 2},
            "scaling": {"num_workers": 2, "cpus_per_worker": 1},
            "pack_size": 4,
            "checkpoint_every": 50,
        },
        "artifacts": {"root": str(root / "store" / "concepts"), "work": str(root / "store" / "work"), "runs": str(root / "store" / "ray")},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", "experiment": "omnipersona-demo"},
        # The gate is open so the demo always shows promotion (the tiny random model recognises nothing);
        # what training changed is on the contact sheets and in the before/after summary.
        "gate": {"minimums": {"recognition_accuracy": 0.0}},
        # Held-out sets (other views, look-alikes, reworded questions): the OmniPBench-style harness scores them.
        "evaluation": {"max_examples": 8, "sampling_steps": 8, "eval_sets_uri": str(root / "eval")},
        "ray": {"num_cpus": 4},
    }


def write_demo_uploads(root: Path, seed: int = 7, concepts: int = 5, size: int = 64) -> None:
    """`concepts` generated concepts (the first three for tenant acme, the rest for globex) and one
    broken upload."""
    from omnipersona.world import make_concepts
    from omnipersona.world.uploads import EvalSetWriteOptions, UploadOptions, write_eval_sets, write_uploads

    made = make_concepts(concepts, seed=seed)
    by_tenant = {tenant: group for tenant, group in (("acme", made[:3]), ("globex", made[3:])) if group}
    write_uploads(by_tenant, root / "uploads", options=UploadOptions(size=size, views=10, edits=2, pool_negatives=16))
    write_eval_sets(by_tenant, root / "eval",
                    options=EvalSetWriteOptions(size=size, views=EVAL_VIEWS, hard_negatives=EVAL_VIEWS, random_negatives=2))
    shutil.move(str(root / "uploads" / "_negatives"), str(root / "negatives"))
    _add_look_alikes(made, root / "negatives" / "images", size)
    # A broken upload: concept.json is not JSON. The job quarantines it and goes on.
    broken = root / "uploads" / "globex" / "broken-upload"
    (broken / "images").mkdir(parents=True)
    (broken / "concept.json").write_text('{"display_name": "broken-upload", "class_word": ')
    shutil.copy(next((root / "uploads" / "acme").glob("*/images/*.png")), broken / "images" / "000.png")


def _add_look_alikes(concepts, folder: Path, size: int, per_concept: int = 8) -> None:
    """Put look-alikes of every concept (one visible attribute off) into the shared negative pool, as a
    pool of many users' pictures would hold: ingest mines them as the concept's hard negatives, so
    training sees "No" for them. Not the held-out ones: the eval sets use the first look-alikes."""
    from omnipersona.pretrain.world_concepts import TRAIN_HARD_OFFSET

    start = len(list(folder.glob("*.png")))
    for i, look_alike in enumerate(n for c in concepts for n in c.hard_negatives(TRAIN_HARD_OFFSET + per_concept, size)[TRAIN_HARD_OFFSET:]):
        look_alike.image.save(folder / f"{start + i:03d}.png")


def run_demo(root: str | Path = "omnipersona-demo", fresh: bool = True, model: str = "world", concepts: int = 5,
             steps: int | None = None) -> int:
    from mlflow import MlflowClient

    from pipelines.config import JobConfig
    from pipelines.personalize import run_job

    root = Path(root).resolve()
    if fresh and root.exists():
        for sub in ("uploads", "negatives", "eval", "store", "mlflow", "outputs"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "mlflow").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    log.info("[demo] writing sample uploads to %s", root / "uploads")
    write_demo_uploads(root, concepts=concepts, size=base_settings(model)["size"])
    raw = demo_config(root, model, steps)
    (root / "job.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = JobConfig(**raw)
    # Keep MLflow's files inside the demo folder (a bare sqlite URI would put them in ./mlruns).
    client = MlflowClient(cfg.mlflow.tracking_uri)
    if client.get_experiment_by_name(cfg.mlflow.experiment) is None:
        client.create_experiment(cfg.mlflow.experiment, artifact_location=(root / "mlflow" / "artifacts").as_uri())
    log.info("[demo] running the personalization job (local Ray, 2 DeepSpeed workers)")
    summary = run_job(cfg)
    if log_format() == "text":  # a JSON log stays JSON lines: the summary is in its file
        print(summary.to_markdown(), flush=True)
    done = [c for c in summary.concepts if c.outcome in ("done", "skipped")]
    if done:
        _before_and_after(cfg, root, summary.job_id, [c.concept_key for c in done])
    log.info("[demo] finished in %.0fs", time.perf_counter() - t0)
    summary_md = root / 'store' / 'work' / summary.job_id / 'runs' / str(summary.run_id) / 'summary.md'
    log.info("[demo] job config: %s   summary: %s", root / "job.yaml", summary_md)
    log.info("[demo] look at runs, concept models and sample pictures with: mlflow ui --backend-store-uri %s",
             cfg.mlflow.tracking_uri)
    return 0


def _before_and_after(cfg, root: Path, job_id: str, concept_keys: list[str]) -> None:
    """Each registered concept's contact sheet (untrained tokens vs its champion), then the summary."""
    from jobs.demo_sheets import concept_sheet, summary_lines

    sheets = []
    for i, key in enumerate(concept_keys, 1):
        sheets.append(concept_sheet(cfg, job_id, root, key, EVAL_VIEWS))
        log.info("[demo] contact sheet %d/%d: %s (logged to its MLflow registration run and model)", i, len(concept_keys),
                 sheets[-1].path)
    log.info("[demo] held-out recognition, untrained tokens -> the trained champion (mean p(yes) on %d held-out pictures "
             "and %d look-alikes per concept):", EVAL_VIEWS, EVAL_VIEWS)
    for line in summary_lines(sheets):
        log.info("[demo] %s", line)


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("demo", parents=[common], help="run the whole product locally on generated concepts")
    s.add_argument("--dir", default="omnipersona-demo", help="working folder (default ./omnipersona-demo)")
    s.add_argument("--keep", action="store_true", help="keep earlier demo data (a rerun then trains nothing)")
    s.add_argument("--model", default="world", help="'world' (default: the small base pretrained on the procedural world, "
                   "shipped with the package, 32-pixel pictures), 'tiny' (random weights, built locally: the pipeline "
                   "only) or a base model folder")
    s.add_argument("--concepts", type=int, default=5, choices=range(1, 9), metavar="N",
                   help="how many concepts to generate, 1-8 (default 5; plus one broken upload)")
    s.add_argument("--steps", type=int, default=None, help="training steps per pack (default: 200 on world, 30 on tiny)")
    s.set_defaults(fn=run)


def run(args) -> int:
    return run_demo(args.dir, fresh=not args.keep, model=args.model, concepts=args.concepts, steps=args.steps)
