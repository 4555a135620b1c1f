"""The UnifyBench importer turns the benchmark's folders into our upload layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from omnipersona.concepts.upload_schema import parse_concept_json
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.snapshot import take_snapshot
from pipelines.ingest.unifybench import import_unifybench, safe_concept_name


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def write(root: Path, rel: str, data: bytes | object) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())


def make_unifybench(root: Path) -> None:
    """Two concepts written in different plausible JSON shapes, plus the random pool."""
    train, test = root / "concept/train", root / "concept/test"
    # "bo": dict-shaped files, LLaVA conversations, an image-keyed VQA file.
    for i in range(3):
        write(train, f"bo/{i}.png", png(i))
    write(train, "bo/cropped/0.png", png(50))
    write(train, "bo/negative_example/n0.png", png(60))
    write(train, "bo/negative_example/score.json", {"n0.png": 0.9})
    write(train, "bo/info.json", {"class": "dog", "info": ["<bo> is a golden retriever.", "<bo> loves tennis balls."],
                                  "attributes": {"toy": "black excavator"}})
    write(train, "bo/conversations.json", [
        {"image": ["0.png"], "conversations": [{"from": "human", "value": "<image>\nWhat is <bo> doing?"},
                                               {"from": "gpt", "value": "<bo> is running."}]},
        {"conversations": [{"from": "human", "value": "What colour is <bo>?"}, {"from": "gpt", "value": "Golden."}]},
    ])
    write(train, "bo/positive_recognitions.json", [{"question": "Is <bo> in this picture?", "answer": "Yes", "image": "0.png"}])
    write(train, "bo/random_recognitions.json", {"items": [["Can you find <bo> here?", "No"]]})
    write(test, "bo/0.png", png(70))
    write(test, "bo/1.png", png(71))
    write(test, "bo/text_only.json", [{"question": "What toy does <bo> like?", "answer": "A black excavator."}])
    write(test, "bo/vqa.json", {"1.png": [{"question": "Is <bo> sitting?", "answer": "Yes."}]})
    write(test, "bo/t2i_conditions.json", [{"prompt": "<bo> with its toy"}, "<bo> on a beach"])
    # "Mam": a capitalised name, a plain-string info.json, no test folder, an unreadable JSON file.
    for i in range(2):
        write(train, f"Mam/{i}.jpg", png(100 + i))
    write(train, "Mam/info.json", "A grey cat who sleeps all day.")
    write(train, "Mam/conversations.json", b"{ not json")
    for i in range(3):
        write(root, f"random_images/{i}.png", png(200 + i))


def test_import_produces_concepts_that_ingest_accepts(tmp_path):
    make_unifybench(tmp_path / "ub")
    report = import_unifybench(
        str(tmp_path / "ub"), str(tmp_path / "uploads"), "unifybench", negatives_uri=str(tmp_path / "neg")
    )
    assert report.imported == ["unifybench/bo", "unifybench/mam"]
    assert report.skipped == {} and report.negatives_copied == 3
    assert any("conversations.json is not readable JSON" in n for n in report.notes)
    assert any("no class word" in n for n in report.notes)

    bo_dir = tmp_path / "uploads/unifybench/bo"
    bo = parse_concept_json((bo_dir / "concept.json").read_bytes())
    assert (bo.display_name, bo.class_word) == ("bo", "dog")
    assert bo.facts == ["<sks> is a golden retriever.", "<sks> loves tennis balls."]
    assert bo.attributes == {"toy": "black excavator"}
    assert [(q.question, q.answer, q.with_image) for q in bo.qa] == [
        ("What is <sks> doing?", "<sks> is running.", True),
        ("What colour is <sks>?", "Golden.", False),
    ]
    assert bo.recognition_questions == ["Is <sks> in this picture?", "Can you find <sks> here?"]
    assert [(v.image, v.question) for v in bo.heldout.vqa] == [("heldout/images/1.png", "Is <sks> sitting?")]
    assert bo.heldout.text_qa[0].answer == "A black excavator."
    assert bo.heldout.t2i_prompts == ["<sks> with its toy", "<sks> on a beach"]
    assert sorted(p.name for p in (bo_dir / "images").iterdir()) == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in (bo_dir / "negatives").iterdir()) == ["n0.png"]
    assert not (bo_dir / "cropped").exists()

    mam = parse_concept_json((tmp_path / "uploads/unifybench/mam/concept.json").read_bytes())
    assert mam.facts == ["A grey cat who sleeps all day."] and mam.class_word == "object"

    snapshot, rejected = take_snapshot(IngestConfig(uploads_uri=str(tmp_path / "uploads"), vit_size=64, vae_size=64))
    assert rejected == []
    assert {c.concept_key: c.image_count for c in snapshot.concepts} == {"unifybench/bo": 3, "unifybench/mam": 2}


def test_import_is_idempotent_and_filterable(tmp_path):
    make_unifybench(tmp_path / "ub")
    args = (str(tmp_path / "ub"), str(tmp_path / "uploads"), "unifybench")
    import_unifybench(*args, concepts=["bo"])
    first = take_snapshot(IngestConfig(uploads_uri=args[1], vit_size=64, vae_size=64))[0].digests()
    import_unifybench(*args, concepts=["bo"])
    assert take_snapshot(IngestConfig(uploads_uri=args[1], vit_size=64, vae_size=64))[0].digests() == first
    assert list(first) == ["unifybench/bo"]


def test_safe_concept_names():
    assert safe_concept_name("Yuheng") == "yuheng"
    assert safe_concept_name("my dog!") == "my-dog"
    assert safe_concept_name("../..") is None
