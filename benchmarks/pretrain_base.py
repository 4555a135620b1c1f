"""Build (or find) the cached world base and the evaluation probe.

    python benchmarks/pretrain_base.py            # ~15 min on 2 free CPU cores the first time, then instant
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

from omnipersona.pretrain import PretrainConfig, ensure_world_base  # noqa: E402
from pipelines.evaluate.probe import ProbeConfig, ensure_probe, probe_accuracy  # noqa: E402


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
    print(f"  final losses: {json.dumps({k: round(v, 4) for k, v in recipe['final'].items()})}")
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
