"""Build (or find) the cached world base and the evaluation probe.

    python benchmarks/pretrain_base.py            # ~30 min on one CPU core the first time (measured), then instant
    python benchmarks/pretrain_base.py --out DIR  # also copy the base folder to DIR

The base is a BAGEL-architecture checkpoint (release layout: llm_config.json, vit_config.json,
ema.safetensors, ae.safetensors, tokenizer files) pretrained on the procedural world; it lives in
`$OMNIPERSONA_BASE_CACHE/world-base-<config digest>` (default root ~/.cache/omnipersona).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from omnipersona.model.checkpoint import load_bagel  # noqa: E402
from omnipersona.model.images import to_tensor  # noqa: E402
from omnipersona.model.sampling import append_text, append_vit_image, decode_text, new_context  # noqa: E402
from omnipersona.pretrain import PretrainConfig, ensure_world_base  # noqa: E402
from omnipersona.pretrain.config import TaskMix  # noqa: E402
from omnipersona.pretrain.tasks import pretrain_sample  # noqa: E402
from pipelines.evaluate.metrics import answer_score  # noqa: E402
from pipelines.evaluate.probe import ProbeConfig, ensure_probe, probe_accuracy  # noqa: E402

CHECK_SEED = 4242  # pretraining draws from seed 0: these samples are fresh


@torch.no_grad()
def base_checks(folder: Path, n: int = 48) -> dict[str, float]:
    """What the base can do before any concept is trained, on fresh samples of its own tasks:
    answer score of generic VQA and of named VQA (a description in context), and the accuracy of
    the Yes / No tasks (attribute questions, recognising a described object among look-alikes) as
    balanced accuracy (mean of the Yes and the No samples' accuracy: always-Yes scores 0.5)."""
    bundle = load_bagel(str(folder))
    model, tok, special = bundle.model, bundle.tokenizer, bundle.special
    size = bundle.config.vit.image_size
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    out = {}
    for task in ("vqa", "named_vqa", "attribute_check", "named_recognition"):
        mix = TaskMix(**{k: float(k == task) for k in TaskMix.model_fields})
        scores, by_answer = [], {"Yes": [], "No": []}
        for i in range(n):
            _, segs = pretrain_sample(CHECK_SEED, i, mix, size, cfg_dropout=0.0)
            ctx = new_context(model)
            for seg in segs[:-1]:
                if seg.kind == "vit":
                    append_vit_image(model, ctx, to_tensor(seg.image, (size, size)), special)
                else:
                    append_text(model, ctx, tok.encode(seg.text, add_special_tokens=False), special)
            first = {}
            said = tok.decode(decode_text(model, ctx, special, 12, None, lambda lg: first.setdefault("logits", lg)))
            gold = segs[-1].text
            if gold in by_answer:
                by_answer[gold].append(float((first["logits"][yes] > first["logits"][no]) == (gold == "Yes")))
            else:
                scores.append(answer_score(said, gold))
        if by_answer["Yes"] or by_answer["No"]:
            scores = [np.mean(v) for v in by_answer.values() if v]
        out[task] = float(np.mean(scores))
    return out


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="copy the finished base folder here")
    ap.add_argument("--root", default=None, help="cache root (default $OMNIPERSONA_BASE_CACHE or ~/.cache/omnipersona)")
    ap.add_argument("--skip-probe", action="store_true")
    args = ap.parse_args(argv)

    start = time.time()
    cfg = PretrainConfig()
    folder = ensure_world_base(cfg, args.root)
    recipe = json.loads((folder / "pretrain_recipe.json").read_text())
    print(f"world base: {folder} ({folder_size(folder) / 2**20:.1f} MiB), digest {cfg.digest()}")
    print(f"  built in {recipe['seconds']['total']:.0f}s: {json.dumps({k: round(v) for k, v in recipe['seconds'].items()})}")
    print(f"  final losses: {json.dumps({k: round(v, 4) for k, v in recipe['final'].items() if v is not None})}")
    checks = base_checks(folder)
    print("  base checks on fresh samples (answer score / Yes-No accuracy): "
          + ", ".join(f"{k} {v:.2f}" for k, v in checks.items()))
    if not args.skip_probe:
        probe = ensure_probe(ProbeConfig(image_size=cfg.model.image_size), args.root)
        acc = probe_accuracy(probe)
        print("probe accuracy on fresh clean renders: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    if args.out:
        shutil.copytree(folder, args.out, dirs_exist_ok=True)
        print(f"copied to {args.out}")
    print(f"done in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
