"""`omnipersona infer`: understand / generate / edit with registered concepts."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("infer", parents=[common], help="understand / generate / edit with registered concepts")
    s.add_argument("task", choices=["understand", "generate", "edit"], help="what to do")
    s.add_argument("--model", action="append", required=True, help="models:/<prefix>.<tenant>.<concept>@champion (repeatable)")
    s.add_argument("--tracking-uri", required=True, help="the MLflow tracking server the concepts are registered in")
    s.add_argument("--base", required=True, help="the base model the concepts were trained on (folder, s3:// URI or 'tiny')")
    s.add_argument("--prompt", required=True, help="text naming concepts as <name>")
    s.add_argument("--image", help="input picture (understand: optional; edit: required)")
    s.add_argument("--concept", help="concept to generate/edit (default: the first --model)")
    s.add_argument("--out", default="omnipersona-output.png", help="where generate/edit write the picture")
    s.add_argument("--no-replay", action="store_true", help="switch knowledge replay off")
    s.add_argument("--image-size", type=int, default=64, help="picture size in pixels (default 64)")
    s.add_argument("--steps", type=int, default=50, help="denoising steps")
    s.set_defaults(fn=run)


def run(args) -> int:
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
