"""`omnipersona demo`: the whole product on one machine, with nothing to set up.

Generates a small set of personal concepts (one of them broken on purpose), writes them as user
uploads to a local folder, and runs the real job on an embedded default: local Ray, a local folder
as the object store, a sqlite MLflow, the tiny BAGEL. Then it loads the champion concepts from the
registry and runs one inference per task.
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


def demo_config(root: Path, model: str = "tiny", steps: int = 30) -> dict:
    return {
        "job_id": "demo",
        "ingest": {"uploads_uri": str(root / "uploads"), "negatives_uri": str(root / "negatives"),
                   "vit_size": 64, "vae_size": 64, "epochs": 2, "samples_per_task": 4},
        "model": {"uri": model, "tiny_cache": str(root / "models" / "tiny-bagel")},
        "train": {
            "recipe": {"steps": steps, "batch_size": 4, "lr": 0.02, "num_und_tokens": 8, "num_gen_tokens": 8},
            "deepspeed": {"zero_stage": 2},
            "scaling": {"num_workers": 2, "cpus_per_worker": 1},
            "pack_size": 4,
            "checkpoint_every": 10,
        },
        "artifacts": {"root": str(root / "store" / "concepts"), "work": str(root / "store" / "work"), "runs": str(root / "store" / "ray")},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", "experiment": "omnipersona-demo"},
        # The tiny random model cannot recognise anything: the gate is set so the demo shows promotion.
        "gate": {"minimums": {"recognition_accuracy": 0.0}},
        # Held-out sets (other views, look-alikes, reworded questions): the OmniPBench-style harness scores them.
        "evaluation": {"max_examples": 8, "sampling_steps": 8, "eval_sets_uri": str(root / "eval")},
        "ray": {"num_cpus": 4},
    }


def write_demo_uploads(root: Path, seed: int = 7, concepts: int = 5) -> None:
    """`concepts` generated concepts (the first three for tenant acme, the rest for globex) and one
    broken upload."""
    from omnipersona.world import make_concepts
    from omnipersona.world.uploads import EvalSetWriteOptions, UploadOptions, write_eval_sets, write_uploads

    made = make_concepts(concepts, seed=seed)
    by_tenant = {tenant: group for tenant, group in (("acme", made[:3]), ("globex", made[3:])) if group}
    write_uploads(by_tenant, root / "uploads", options=UploadOptions(views=6, edits=2, pool_negatives=16))
    write_eval_sets(by_tenant, root / "eval", options=EvalSetWriteOptions(views=2, hard_negatives=2, random_negatives=2))
    shutil.move(str(root / "uploads" / "_negatives"), str(root / "negatives"))
    # A broken upload: concept.json is not JSON. The job quarantines it and goes on.
    broken = root / "uploads" / "globex" / "broken-upload"
    (broken / "images").mkdir(parents=True)
    (broken / "concept.json").write_text('{"display_name": "broken-upload", "class_word": ')
    shutil.copy(next((root / "uploads" / "acme").glob("*/images/*.png")), broken / "images" / "000.png")


def run_demo(root: str | Path = "omnipersona-demo", fresh: bool = True, model: str = "tiny", concepts: int = 5,
             steps: int = 30) -> int:
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
    write_demo_uploads(root, concepts=concepts)
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
        _inference_tour(cfg, root, done[0].concept_key)
    log.info("[demo] finished in %.0fs", time.perf_counter() - t0)
    summary_md = root / 'store' / 'work' / summary.job_id / 'runs' / str(summary.run_id) / 'summary.md'
    log.info("[demo] job config: %s   summary: %s", root / "job.yaml", summary_md)
    log.info("[demo] look at runs, concept models and sample pictures with: mlflow ui --backend-store-uri %s",
             cfg.mlflow.tracking_uri)
    return 0


def _inference_tour(cfg, root: Path, concept_key: str) -> None:
    """One inference per task with the registered champion, as `omnipersona infer` does."""
    import numpy as np
    from PIL import Image

    from omnipersona.identity import ConceptId
    from pipelines.inference import load_persona

    concept_id = ConceptId.parse(concept_key)
    persona, name = load_persona(cfg.mlflow.tracking_uri, [concept_id.model_uri(cfg.mlflow.registry_prefix, alias="champion")],
                                 cfg.model.uri, cfg.model.tiny_cache, image_size=cfg.ingest.vit_size, sampling_steps=8)
    name = name[0]
    out = root / "outputs"
    out.mkdir(exist_ok=True)
    photo = np.asarray(Image.open(next((root / "uploads" / concept_id.tenant / concept_id.concept / "images").glob("*.png"))).convert("RGB"))
    ans = persona.understand(f"Is <{name}> in this image?", image=photo)
    log.info("[demo] understand: 'Is <%s> in this image?' -> %r (p(yes)=%.2f)", name, ans.text, ans.yes_probability)
    gen = persona.generate(name, f"Generate a toy for <{name}>.")
    gen.image.save(out / "generate.png")
    log.info("[demo] generate with knowledge replay: question=%r answer=%r rewritten prompt=%r -> %s",
             gen.replay.question, gen.replay.answer, gen.prompt_used, out / "generate.png")
    edit = persona.edit(name, photo, f"Put <{name}> on the beach.", replay=False)
    edit.image.save(out / "edit.png")
    log.info("[demo] edit: 'Put <%s> on the beach.' -> %s", name, out / "edit.png")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("demo", parents=[common], help="run the whole product locally on generated concepts")
    s.add_argument("--dir", default="omnipersona-demo", help="working folder (default ./omnipersona-demo)")
    s.add_argument("--keep", action="store_true", help="keep earlier demo data (a rerun then trains nothing)")
    s.add_argument("--model", default="tiny", help="base model folder or 'tiny' (default: the tiny BAGEL, built locally)")
    s.add_argument("--concepts", type=int, default=5, choices=range(1, 9), metavar="N",
                   help="how many concepts to generate, 1-8 (default 5; plus one broken upload)")
    s.add_argument("--steps", type=int, default=30, help="training steps per pack (default 30)")
    s.set_defaults(fn=run)


def run(args) -> int:
    return run_demo(args.dir, fresh=not args.keep, model=args.model, concepts=args.concepts, steps=args.steps)
