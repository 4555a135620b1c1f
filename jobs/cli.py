"""The `omnipersona` command: personalize, demo, status, infer, delete.

It sits above the library (it imports `pipelines/`), never inside `omnipersona/`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path


def _personalize(args) -> int:
    from jobs.personalize import main

    return main(["--config", args.config] + (["--job-id", args.job_id] if args.job_id else []))


def _demo(args) -> int:
    from jobs.demo import run_demo

    return run_demo(args.dir, fresh=not args.keep, model=args.model)


def _status(args) -> int:
    from pipelines.config import JobConfig
    from pipelines.paths import JobPaths
    from pipelines.storage import filesystem_for
    from pipelines.summary import read_run_summaries, runs_table

    cfg = JobConfig.from_yaml(args.config)
    paths = JobPaths.of(cfg, args.job_id)
    fs, runs_dir = filesystem_for(paths.runs, cfg.storage)
    summaries = read_run_summaries(fs, runs_dir)
    if summaries:
        print(f"job {args.job_id}: {len(summaries)} run(s)\n")
        print(runs_table(summaries))
        print(f"latest run {summaries[-1].run_id}:\n")
        print(summaries[-1].to_markdown())
        return 0
    quarantine = fs.get_file_info(filesystem_for(paths.quarantine, cfg.storage)[1])
    state = "running (ingest done)" if quarantine.type.name == "File" else "unknown (no trace of this job id)"
    print(f"job {args.job_id}: {state}; training progress is in the job log (`ray job logs <submission id>`)")
    return 0 if quarantine.type.name == "File" else 1


def _infer(args) -> int:
    from PIL import Image

    from pipelines.inference import load_persona

    persona, names = load_persona(args.tracking_uri, args.model, args.base, image_size=args.image_size, sampling_steps=args.steps)
    image = Image.open(args.image).convert("RGB") if args.image else None
    if args.task == "understand":
        ans = persona.understand(args.prompt, image=image)
        print(json.dumps({"answer": ans.text, "yes_probability": ans.yes_probability}))
        return 0
    concept = args.concept or names[0]
    if args.task == "generate":
        out = persona.generate(concept, args.prompt, replay=not args.no_replay)
    else:
        if image is None:
            raise SystemExit("edit needs --image")
        out = persona.edit(concept, image, args.prompt, replay=not args.no_replay)
    out.image.save(args.out)
    trace = out.replay.__dict__ if out.replay else None
    print(json.dumps({"image": str(Path(args.out).resolve()), "prompt_used": out.prompt_used, "replay": trace}))
    return 0


DELETE_COMPLETE = 0
DELETE_INCOMPLETE = 2
DELETE_NOT_FOUND = 4
DELETE_EXIT_CODES = f"""exit codes:
  {DELETE_COMPLETE}  deleted: nothing of the concept is left in any store (MLflow's rows of the
     soft-deleted runs and logged models wait for `mlflow gc`, listed in the output)
  {DELETE_INCOMPLETE}  could not complete: a store failed or could not be reached; the output names
     what is left (stores, paths, ids). Run the same command again: every step is idempotent.
     (argparse also exits with 2 on invalid arguments.)
  {DELETE_NOT_FOUND}  nothing of the concept was found in any store (never there, or already deleted)
"""


def _delete(args) -> int:
    from omnipersona.identity import ConceptId
    from pipelines.config import JobConfig
    from pipelines.delete import awaiting_gc, concept_stores, delete_concept, describe, folder_store
    from pipelines.register import ConceptRegistry, MlflowConnection

    try:
        concept = ConceptId(args.tenant, args.concept)
    except ValueError as e:
        print(f"omnipersona delete: {e}", file=sys.stderr)
        return DELETE_INCOMPLETE
    # MLflow's own HTTP retries back off for minutes against a server that is down; the registry's
    # RetryPolicy already retries (seconds). Failing fast is fine here: the report says what is left
    # and running delete again finishes the job.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = JobConfig.from_yaml(args.config)
    registry = ConceptRegistry(MlflowConnection(cfg.mlflow.tracking_uri, experiment_name=cfg.mlflow.experiment),
                               prefix=cfg.mlflow.registry_prefix)
    stores = concept_stores(concept, registry=registry, artifact_root=cfg.artifacts.root, work_root=cfg.artifacts.work_root,
                            runs_root=cfg.artifacts.runs_root, storage=cfg.storage, eval_sets_uri=cfg.evaluation.eval_sets_uri,
                            uploads_uri=cfg.ingest.uploads_uri if args.purge_uploads else None)
    report = delete_concept(concept, stores)
    mlflow_steps = [s for s in report.steps if s.store.startswith("mlflow.")]
    if not any(s.not_attempted or any(e.startswith("could not list") for e in s.errors) for s in mlflow_steps):
        try:
            report.awaiting_gc = awaiting_gc(registry, concept, report)
        except Exception as e:  # noqa: BLE001 - informational only; the deletion itself is reported above
            report.awaiting_gc = {"could not list": [describe(e)]}
    if not args.purge_uploads:
        uploads = folder_store("uploads", "", cfg.ingest.uploads_uri, concept.key, cfg.storage)
        try:
            report.uploads_kept = next((f.label for f in uploads.find()), None)
        except OSError as e:
            report.uploads_kept = f"unknown ({describe(e)})"
    print(report.to_text(), flush=True)
    if args.json:
        print(report.to_json(), flush=True)
    if not report.complete:
        return DELETE_INCOMPLETE
    return DELETE_COMPLETE if report.found_anything else DELETE_NOT_FOUND


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omnipersona", description="Batch personalization of a frozen BAGEL model (OmniPersona).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("personalize", help="run the batch job from a YAML config (what `ray job submit` runs)")
    s.add_argument("--config", required=True)
    s.add_argument("--job-id")
    s.set_defaults(fn=_personalize)

    s = sub.add_parser("demo", help="run the whole product locally on generated concepts")
    s.add_argument("--dir", default="omnipersona-demo", help="working folder (default ./omnipersona-demo)")
    s.add_argument("--keep", action="store_true", help="keep earlier demo data (a rerun then trains nothing)")
    s.add_argument("--model", default="tiny", help="base model folder or 'tiny'")
    s.set_defaults(fn=_demo)

    s = sub.add_parser("status", help="summary (or state) of a job")
    s.add_argument("job_id")
    s.add_argument("--config", required=True)
    s.set_defaults(fn=_status)

    s = sub.add_parser("infer", help="understand / generate / edit with registered concepts")
    s.add_argument("task", choices=["understand", "generate", "edit"])
    s.add_argument("--model", action="append", required=True, help="models:/<prefix>.<tenant>.<concept>@champion (repeatable)")
    s.add_argument("--tracking-uri", required=True)
    s.add_argument("--base", required=True, help="the base model the concepts were trained on (folder, s3:// URI or 'tiny')")
    s.add_argument("--prompt", required=True, help="text naming concepts as <name>")
    s.add_argument("--image")
    s.add_argument("--concept", help="concept to generate/edit (default: the first --model)")
    s.add_argument("--out", default="omnipersona-output.png")
    s.add_argument("--no-replay", action="store_true", help="switch knowledge replay off")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--steps", type=int, default=50, help="denoising steps")
    s.set_defaults(fn=_infer)

    s = sub.add_parser(
        "delete", help="remove everything made from a concept (MLflow, artifacts, checkpoints, examples, summaries)",
        description=textwrap.fill(
            "Remove a concept from every store a job writes (docs/deployment.md, 'Deleting a concept'): the "
            "registered model, logged models and registration runs in MLflow (files purged, runs and models "
            "soft-deleted until `mlflow gc`), artifacts, held-out eval set, Ray Train checkpoints and training "
            "examples of the jobs that had it, and its rows in summaries and quarantine reports. Prints what was "
            "deleted and what is left.", 79),
        epilog=DELETE_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--tenant", required=True)
    s.add_argument("--concept", required=True)
    s.add_argument("--config", required=True, help="the job YAML whose stores to clean (OMNIPERSONA_* env vars override it)")
    s.add_argument("--purge-uploads", action="store_true",
                   help="also delete the concept's raw uploads (without it the next job trains the concept again)")
    s.add_argument("--json", action="store_true", help="also print the report as one line of JSON")
    s.set_defaults(fn=_delete)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
