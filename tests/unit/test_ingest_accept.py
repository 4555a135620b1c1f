"""Concept-level decisions without Ray (see tests/unit/ingest_in_process.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.ingest.config import IngestConfig, ValidationLimits
from tests.unit.ingest_in_process import ingest_in_process


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 10, (40, 40, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def spec(**extra) -> bytes:
    return json.dumps({"display_name": "n", "class_word": "dog", **extra}).encode()


def run(cfg: IngestConfig, *, mutate=None):
    materials, rows = ingest_in_process(cfg, mutate=mutate)
    return {m.concept_key: m for m in materials}, {(r.concept, r.key, r.reason.value) for r in rows}


def test_concept_level_rules(tmp_path):
    up = tmp_path / "up"
    # a: healthy, with an edit triplet, a stray edit file, a missing edit file, a conflicting negative.
    write(up, "t/a/concept.json", spec(edits=[
        {"source": "edits/s.png", "target": "edits/t.png", "instruction": "Remove <sks>."},
        {"source": "edits/s.png", "target": "edits/gone.png", "instruction": "Remove <sks>."},
    ]))
    for i in range(2):
        write(up, f"t/a/images/{i}.png", png(i))
    write(up, "t/a/edits/s.png", png(10))
    write(up, "t/a/edits/t.png", png(11))
    write(up, "t/a/edits/extra.png", png(12))
    write(up, "t/a/negatives/same-as-positive.png", png(0))
    write(up, "t/a/negatives/ok.png", png(13))
    write(up, "t/a/images/big.png", b"x" * 30000)
    write(up, "t/a/images/packed.png.gz", png(14))
    # b: no concept.json. c: healthy, same tenant. d: other tenant.
    write(up, "t/b/images/0.png", png(20))
    for concept, seed in (("t/c", 30), ("u/d", 40)):
        write(up, f"{concept}/concept.json", spec())
        for i in range(2):
            write(up, f"{concept}/images/{i}.png", png(seed + i))
    write(up, "t/c/images/vanishes.png", png(35))
    write(up, "t/c/images/grows.png", png(36))

    def mutate():  # between listing and reading
        (up / "t/c/images/vanishes.png").unlink()
        (up / "t/c/images/grows.png").write_bytes(png(36) + b"more")

    cfg = IngestConfig(uploads_uri=str(up), vit_size=32, vae_size=32, limits=ValidationLimits(max_file_bytes=20000, min_side=16))
    materials, rows = run(cfg, mutate=mutate)

    assert rows == {
        ("a", "t/a/edits/extra.png", "unexpected_object"),
        ("a", "t/a/edits/gone.png", "missing_edit_file"),
        ("a", "t/a/negatives/same-as-positive.png", "duplicate_image"),
        ("a", "t/a/images/big.png", "file_too_large"),
        ("a", "t/a/images/packed.png.gz", "compressed_file"),
        ("b", "t/b/concept.json", "missing_concept_json"),
        ("c", "t/c/images/vanishes.png", "changed_since_snapshot"),
        ("c", "t/c/images/grows.png", "changed_since_snapshot"),
    }
    assert set(materials) == {"t/a", "t/c", "u/d"}
    a = materials["t/a"]
    assert len(a.edits) == 1 and a.edits[0][0].endswith("edits/s.png") and a.edits[0][1].endswith("edits/t.png")
    assert a.hard_negatives[0].endswith("negatives/ok.png")
    # Random negatives: the same tenant's other concepts only, never another tenant's images.
    assert sorted(Path(p).relative_to(up).as_posix() for p in a.random_negatives) == ["t/c/images/0.png", "t/c/images/1.png"]
    assert materials["u/d"].random_negatives == []


def test_other_tenants_and_mined_negatives_when_allowed(tmp_path):
    up = tmp_path / "up"
    for concept, seed in (("t/a", 0), ("u/b", 10)):
        write(up, f"{concept}/concept.json", spec())
        for i in range(3):
            write(up, f"{concept}/images/{i}.png", png(seed + i))
    cfg = IngestConfig(uploads_uri=str(up), vit_size=32, vae_size=32, negatives_from_other_tenants=True,
                       hard_negatives_per_concept=2, limits=ValidationLimits(min_side=16))
    materials, rows = run(cfg)
    assert rows == set()
    a = materials["t/a"]
    assert len(a.random_negatives) == 3 and len(a.hard_negatives) == 2
    assert set(a.hard_negatives) <= set(a.random_negatives)
    capped, _ = run(cfg.model_copy(update={"negative_candidates": 2}))
    assert len(capped["t/a"].random_negatives) == 2
