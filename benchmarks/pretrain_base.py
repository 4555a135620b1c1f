"""The world base and the evaluation probe: check the shipped ones, or build and ship them.

    python benchmarks/pretrain_base.py                  # what the shipped base can do (checks below), ~3 min
    python benchmarks/pretrain_base.py --write-shipped  # build the default recipe (~27 min on one CPU core,
                                                        # measured; instant from the cache) and the probe, and
                                                        # write both to omnipersona/pretrain/shipped/
    python benchmarks/pretrain_base.py --out DIR        # also copy the base folder to DIR

The base is a BAGEL-architecture checkpoint (release layout: llm_config.json, vit_config.json,
ema.safetensors, ae.safetensors, tokenizer files) pretrained on the procedural world. The default
recipe's ships with the package (`omnipersona/pretrain/shipped/world-base`, `model.uri: world`); a
build lives in `$OMNIPERSONA_BASE_CACHE/world-base-<config digest>` (default root ~/.cache/omnipersona).
`--write-shipped --root $(mktemp -d)` builds from nothing; on the same machine it writes the same bytes.
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

from omnipersona.infer.replay import KnowledgeReplay  # noqa: E402
from omnipersona.model.checkpoint import load_bagel  # noqa: E402
from omnipersona.model.images import to_pil, to_tensor  # noqa: E402
from omnipersona.model.sampling import (  # noqa: E402
    FlowSampling,
    append_text,
    append_vit_image,
    decode_text,
    latent_grid,
    new_context,
    sample_latent,
)
from omnipersona.pretrain import PretrainConfig, ensure_world_base  # noqa: E402
from omnipersona.pretrain.config import TaskMix  # noqa: E402
from omnipersona.pretrain.tasks import pretrain_sample  # noqa: E402
from omnipersona.world import make_concepts  # noqa: E402
from omnipersona.evaluation import EvalOptions  # noqa: E402
from omnipersona.evaluation.metrics import answer_score, weighted_recognition_accuracy  # noqa: E402
from omnipersona.pretrain.probe import ProbeConfig, ensure_probe, probe_accuracy, probe_folder  # noqa: E402
from omnipersona.pretrain.shipped import SHIPPED_ROOT, write_shipped  # noqa: E402
from omnipersona.world.eval_sets import eval_set_from_world  # noqa: E402

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


def _p_yes(bundle, context: list, question: str) -> float:
    """p(Yes) / (p(Yes) + p(No)) of the first answer token after `context` (texts and images) and `question`."""
    model, tok, special = bundle.model, bundle.tokenizer, bundle.special
    size = bundle.config.vit.image_size
    ctx = new_context(model)
    for part in [*context, question]:
        if isinstance(part, str):
            append_text(model, ctx, tok.encode(part, add_special_tokens=False), special)
        else:
            append_vit_image(model, ctx, to_tensor(part, (size, size)), special)
    first = {}
    decode_text(model, ctx, special, 1, None, lambda lg: first.setdefault("logits", lg))
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    return float(first["logits"][[yes, no]].softmax(-1)[0])


@torch.no_grad()
def concept_checks(folder: Path, probe=None, concepts: int = 4) -> dict[str, float]:
    """Three abilities OmniPersona relies on, on held-out world concepts (the dev split's first
    `concepts`, never in pretraining): recognising a concept described in context among held-out
    views, look-alikes and random objects (weighted as `recognition_accuracy`); copying the name into
    the replay intent question ("What is oscar's toy?"); and, with the probe, drawing the item a
    request spells out ("a photo of oscar with a red rocket")."""
    bundle = load_bagel(str(folder))
    model, tok, special = bundle.model, bundle.tokenizer, bundle.special
    size = bundle.config.vit.image_size
    ids = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    out, recognition, copied, drawn = {}, [], [], []
    for concept in make_concepts(concepts, seed=101):
        es = eval_set_from_world(concept, EvalOptions(image_size=size))
        description, n = " ".join(concept.facts()[:3]), concept.name
        p = lambda images: [_p_yes(bundle, [description, im], f"Is {n} in this image?") for im in images]  # noqa: E731
        recognition.append(weighted_recognition_accuracy(p(es.views), p(es.hard_negatives), p(es.random_negatives))["recognition_accuracy"])
        for request, case in zip(concept.parg_requests(), es.parg):
            ctx = new_context(model)
            append_text(model, ctx, ids(" ".join(concept.facts())), special)
            append_text(model, ctx, ids(KnowledgeReplay(None).intent_prompt(n, request.request)), special)
            copied.append(float(tok.decode(decode_text(model, ctx, special, 24)).strip() == request.question))
            if probe is not None:  # the request as replay rewrites it: "a photo of oscar with a red rocket"
                ctx, text_free = new_context(model), new_context(model)
                append_text(model, ctx, ids(description), special)
                append_text(model, ctx, ids(request.rewritten), special)
                latent = sample_latent(model, ctx, latent_grid(model, size, size), special,
                                       FlowSampling(num_steps=20, seed=len(drawn)), cfg_text_ctx=text_free)
                drawn.append(float(probe.read([to_pil(bundle.vae.decode(latent))])[0].item == case.item_kind))
    out["named_recognition_held_out"] = float(np.mean(recognition))
    out["intent_copies_name"] = float(np.mean(copied))
    if drawn:
        out["item_drawn_as_asked"] = float(np.mean(drawn))
    return out


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="copy the finished base folder here")
    ap.add_argument("--root", default=None, help="cache root (default $OMNIPERSONA_BASE_CACHE or ~/.cache/omnipersona)")
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--write-shipped", action="store_true",
                    help=f"build (or take from the cache, never from the shipped files) the default base and probe, "
                         f"and write them to {SHIPPED_ROOT}")
    args = ap.parse_args(argv)

    start = time.time()
    cfg = PretrainConfig()
    probe_cfg = ProbeConfig(image_size=cfg.model.image_size)
    if args.write_shipped:
        built = ensure_world_base(cfg, args.root, shipped=False)
        ensure_probe(probe_cfg, args.root, shipped=False)
        table = write_shipped(built, probe_folder(probe_cfg, args.root))
        print(f"wrote {SHIPPED_ROOT} from {built} ({sum(size for _, size in table.values())} bytes):")
        for name, (sha, size) in table.items():
            print(f"  {sha[:16]}  {size:>9}  {name}")
    folder = ensure_world_base(cfg, args.root)
    recipe = json.loads((folder / "pretrain_recipe.json").read_text())
    print(f"world base: {folder} ({folder_size(folder) / 2**20:.1f} MiB), digest {cfg.digest()}")
    if "seconds" in recipe:  # a build's own record (the shipped recipe keeps only what the bytes depend on)
        print(f"  built in {recipe['seconds']['total']:.0f}s: {json.dumps({k: round(v) for k, v in recipe['seconds'].items()})}")
    print(f"  final losses: {json.dumps({k: round(v, 4) for k, v in recipe['final'].items() if v is not None})}")
    checks = base_checks(folder)
    print("  base checks on fresh samples (answer score / Yes-No accuracy): "
          + ", ".join(f"{k} {v:.2f}" for k, v in checks.items()))
    probe = None
    if not args.skip_probe:
        probe = ensure_probe(probe_cfg, args.root)
        acc = probe_accuracy(probe)
        print("probe accuracy on fresh clean renders: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    held_out = concept_checks(folder, probe)
    print("  on held-out concepts: " + ", ".join(f"{k} {v:.2f}" for k, v in held_out.items()))
    if args.out:
        shutil.copytree(folder, args.out, dirs_exist_ok=True)
        print(f"copied to {args.out}")
    print(f"done in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
