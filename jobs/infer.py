"""`omnipersona infer`: understand / generate / edit with registered concepts."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

MODEL_URI_HELP = ("a registered concept: models:/<name>@<alias>, models:/<name>/<version> or models:/m-<logged model id>, "
                  "e.g. models:/omnipersona.acme.maeve@champion (repeatable: the concepts are loaded together)")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("infer", parents=[common], help="understand / generate / edit with registered concepts")
    s.add_argument("task", choices=["understand", "generate", "edit"], help="what to do")
    s.add_argument("--model", action="append", required=True, help=MODEL_URI_HELP)
    s.add_argument("--config", help="a job YAML: its mlflow.tracking_uri, model.uri (the base), model.tiny_cache and "
                                    "storage serve when --tracking-uri / --base are not given")
    s.add_argument("--tracking-uri", help="the MLflow tracking server the concepts are registered in "
                                          "(default: the job config's, else $MLFLOW_TRACKING_URI)")
    s.add_argument("--base", help="the base model the concepts were trained on: folder, s3:// URI or 'tiny' "
                                  "(default: the job config's model.uri, else the base the concept models recorded)")
    s.add_argument("--prompt", required=True, help="text naming loaded concepts as <display name>")
    s.add_argument("--image", help="input picture (understand: optional; edit: required)")
    s.add_argument("--concept", help="display name of the concept to generate/edit (default: the first --model)")
    s.add_argument("--out", default="omnipersona-output.png", help="where generate/edit write the picture")
    s.add_argument("--no-replay", action="store_true", help="switch knowledge replay off")
    s.add_argument("--image-size", type=int, default=64, help="picture size in pixels (default 64)")
    s.add_argument("--steps", type=int, default=50, help="denoising steps")
    s.set_defaults(fn=run)


def settings(args) -> dict:
    """Where the concepts and the base are: flags, then the job config, then the environment."""
    from pipelines.inference import DEFAULT_TINY_CACHE, storage_from_env

    cfg = None
    if args.config:
        from pipelines.config import JobConfig

        cfg = JobConfig.from_yaml(args.config)
    tracking_uri = args.tracking_uri or (cfg.mlflow.tracking_uri if cfg else None) or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ValueError("no MLflow tracking server: pass --tracking-uri or --config <job.yaml>, or set MLFLOW_TRACKING_URI")
    return {
        "tracking_uri": tracking_uri,
        "base_uri": args.base or (cfg.model.uri if cfg else None),
        "tiny_cache": cfg.model.tiny_cache if cfg else DEFAULT_TINY_CACHE,
        "storage": cfg.storage if cfg else storage_from_env(),
    }


def run(args) -> int:
    from PIL import Image

    from omnipersona.identity import parse_any_model_uri
    from pipelines.inference import load_persona, run_request

    for uri in args.model:  # every URI checked before anything is read or downloaded
        parse_any_model_uri(uri)
    # Output is the answer (stdout) and at most one line of error (stderr): no download progress bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.task == "edit" and not args.image:
        raise ValueError("edit needs --image (the picture to edit)")
    image = Image.open(args.image).convert("RGB") if args.image else None
    persona, names = load_persona(model_uris=args.model, image_size=args.image_size, sampling_steps=args.steps,
                                  **settings(args))
    result = run_request(persona, args.task, args.prompt, image, concept=args.concept or names[0],
                         replay=not args.no_replay)
    if args.task == "understand":
        print(json.dumps({"answer": result["answer"], "yes_probability": result["yes_probability"]}))
        return 0
    result["image"].save(args.out)
    trace = result["replay"].__dict__ if result["replay"] else None
    print(json.dumps({"image": str(Path(args.out).resolve()), "prompt_used": result["prompt_used"], "replay": trace}))
    return 0
