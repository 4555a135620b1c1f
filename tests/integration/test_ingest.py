"""Ingest end to end: real SeaweedFS on loopback, real Ray, a deliberately messy upload bucket."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from pipelines.ingest.config import IngestConfig
from pipelines.ingest.dataset import build_ingest
from pipelines.ingest.quarantine import QuarantineReport
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration

UPLOADS = "uploads"
NEGATIVES = "negative-pool"
HEALTHY = {"acme/maeve", "acme/bo", "acme/kiki", "acme/giant", "globex/rex", "globex/luna", "globex/pip"}


# ---- synthetic files ----------------------------------------------------------------------------


def photo(seed: int, size: tuple[int, int] = (96, 80), mode: str = "RGB") -> Image.Image:
    """A distinct image per seed: a colour field with a gradient and noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0, 60, w)[None, :, None]
    pixels = np.clip(base + ramp + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR claims ``width`` x ``height`` (no pixel data behind it)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def exif_rotated_jpeg(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encode(photo(seed, (120, 64)), "JPEG", exif=exif.tobytes())


def concept_json(name: str, class_word: str, **extra) -> bytes:
    return json.dumps({"display_name": name, "class_word": class_word, **extra}).encode()


def write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_upload_tree(root: Path) -> None:
    seed = iter(range(1000))
    # acme/maeve: clean PNGs, a CMYK JPEG, an EXIF-rotated photo, an edit triplet, rich concept.json.
    write(root, "acme/maeve/concept.json", concept_json(
        "Maeve", "dog",
        facts=["Maeve loves swimming in the lake."],
        attributes={"toy": "black excavator"},
        qa=[{"question": "What does Maeve chase?", "answer": "Maeve chases tennis balls."},
            {"question": "Is Maeve sitting here?", "answer": "Yes, <sks> is sitting.", "with_image": True}],
        edits=[{"source": "edits/src.png", "target": "edits/tgt.png", "instruction": "Remove maeve from the photo."}],
    ))
    for i in range(3):
        write(root, f"acme/maeve/images/{i}.png", encode(photo(next(seed))))
    write(root, "acme/maeve/images/cmyk.jpg", encode(photo(next(seed), mode="CMYK"), "JPEG"))
    write(root, "acme/maeve/images/rotated.jpg", exif_rotated_jpeg(next(seed)))
    write(root, "acme/maeve/edits/src.png", encode(photo(next(seed))))
    write(root, "acme/maeve/edits/tgt.png", encode(photo(next(seed))))
    # acme/bo: a truncated PNG and a zero-byte file.
    write(root, "acme/bo/concept.json", concept_json("bo", "cat"))
    for i in range(3):
        write(root, f"acme/bo/images/{i}.png", encode(photo(next(seed))))
    write(root, "acme/bo/images/broken.png", encode(photo(next(seed)))[:300])
    write(root, "acme/bo/images/empty.png", b"")
    # acme/kiki: an exact duplicate and a text file.
    write(root, "acme/kiki/concept.json", concept_json("kiki", "toy robot"))
    for i in range(3):
        write(root, f"acme/kiki/images/{i}.png", encode(photo(next(seed))))
    write(root, "acme/kiki/images/dup.png", (root / "acme/kiki/images/0.png").read_bytes())
    write(root, "acme/kiki/images/notes.txt", b"these are my favourite photos\n")
    # acme/giant: a PNG whose header claims 20000x20000.
    write(root, "acme/giant/concept.json", concept_json("giant", "teddy bear"))
    for i in range(2):
        write(root, f"acme/giant/images/{i}.png", encode(photo(next(seed))))
    write(root, "acme/giant/images/huge.png", png_header_only(20000, 20000))
    # acme/solo: one image only. acme/badjson: malformed concept.json.
    write(root, "acme/solo/concept.json", concept_json("solo", "mug"))
    write(root, "acme/solo/images/0.png", encode(photo(next(seed))))
    write(root, "acme/badjson/concept.json", b'{"display_name": "badjson", "class_word": ')
    for i in range(2):
        write(root, f"acme/badjson/images/{i}.png", encode(photo(next(seed))))
    # globex: three healthy concepts.
    for name, cls in (("rex", "dog"), ("luna", "cat"), ("pip", "parrot")):
        write(root, f"globex/{name}/concept.json", concept_json(name, cls))
        for i in range(2):
            write(root, f"globex/{name}/images/{i}.png", encode(photo(next(seed))))


def build_negative_pool(root: Path) -> None:
    for i in range(4):
        write(root, f"pool/{i}.png", encode(photo(5000 + i)))


# ---- the test -----------------------------------------------------------------------------------


def put_unsafe_concept(server, concept: str) -> list[str]:
    """Upload a concept under a raw, unsafe name with boto3; returns the keys the server accepted."""
    client = server.client()
    accepted = []
    for rel, body in (("concept.json", concept_json("x", "dog")), ("images/0.png", encode(photo(9000))),
                      ("images/1.png", encode(photo(9001)))):
        key = f"{UPLOADS}/acme/{concept}/{rel}"
        try:
            client.put_object(Bucket=server.bucket, Key=key, Body=body)
            accepted.append(key[len(UPLOADS) + 1 :])
        except ClientError:
            pass  # SeaweedFS itself refuses literal ".." segments; real AWS S3 stores them
    return accepted


@pytest.fixture(scope="module")
def messy_bucket(s3_server, tmp_path_factory):
    local = tmp_path_factory.mktemp("ingest-src")
    build_upload_tree(local / "uploads")
    build_negative_pool(local / "negatives")
    upload_tree(s3_server, local / "uploads", UPLOADS)
    upload_tree(s3_server, local / "negatives", NEGATIVES)
    unsafe = put_unsafe_concept(s3_server, "../other-tenant") + put_unsafe_concept(s3_server, "..%2Fother-tenant")
    return s3_server, unsafe


def test_ingest_quarantines_exactly_the_bad_inputs_and_streams_examples(messy_bucket, ray_session, tmp_path):
    server, unsafe_keys = messy_bucket
    assert unsafe_keys, "the server accepted none of the unsafe keys; the test would prove nothing"
    cfg = IngestConfig(
        uploads_uri=server.uri(UPLOADS),
        negatives_uri=server.uri(NEGATIVES),
        vit_size=64,
        vae_size=64,
        samples_per_task=2,
        seed=7,
    )
    result = build_ingest(cfg, server.storage_config())

    got = {(r.concept, r.key, r.reason.value) for r in result.quarantine.rows}
    expected = {
        ("bo", "acme/bo/images/broken.png", "corrupt_image"),
        ("bo", "acme/bo/images/empty.png", "empty_file"),
        ("kiki", "acme/kiki/images/dup.png", "duplicate_image"),
        ("kiki", "acme/kiki/images/notes.txt", "not_an_image"),
        ("giant", "acme/giant/images/huge.png", "decompression_bomb"),
        ("solo", "acme/solo/", "too_few_images"),
        ("badjson", "acme/badjson/concept.json", "bad_concept_json"),
    } | {(key.split("/")[1], key, "unsafe_name") for key in unsafe_keys}
    assert got == expected
    assert all(r.message for r in result.quarantine.rows)

    # The report round-trips through JSON on the same store.
    report_uri = server.uri("reports/quarantine.json")
    result.quarantine.write(report_uri, server.storage_config())
    from pipelines.storage import filesystem_for, list_objects, read_bytes

    fs, path = filesystem_for(report_uri, server.storage_config())
    assert QuarantineReport.model_validate_json(read_bytes(fs, path)).rows == result.quarantine.rows
    assert [o.key for o in list_objects(server.uri("reports"), server.storage_config())] == ["quarantine.json"]

    # Snapshot: one digest per safe concept folder, images counted as uploaded.
    assert {c.concept_key for c in result.snapshot.concepts} == HEALTHY | {"acme/solo", "acme/badjson"}
    assert result.snapshot.concept("acme/maeve").image_count == 5
    assert len({c.digest for c in result.snapshot.concepts}) == len(result.snapshot.concepts)
    assert all(o.content_hash.startswith("etag:") for c in result.snapshot.concepts for o in c.objects)
    assert [o.key for o in result.snapshot.negatives] == [f"pool/{i}.png" for i in range(4)]

    summaries = {c.concept_key: c for c in result.concepts}
    assert set(summaries) == HEALTHY
    assert summaries["acme/maeve"].image_count == 5  # the CMYK and the rotated photo are accepted
    assert summaries["acme/kiki"].image_count == 3
    assert summaries["acme/maeve"].examples_per_epoch == {"recognition": 4, "vqa": 2, "text_qa": 2, "t2i": 2, "edit": 2}
    assert summaries["acme/bo"].examples_per_epoch == {"recognition": 4, "vqa": 2, "text_qa": 2, "t2i": 2}

    rows = result.dataset.take_all()
    assert {r["concept_key"] for r in rows} == HEALTHY
    # One training epoch, then the gate's (ingest.gate_holdout_every: maeve's 5 images hold 1 out, kiki's 3 none).
    assert {r["epoch"] for r in rows} == {0, 1}
    assert len([r for r in rows if r["epoch"] == 0]) == sum(sum(c.examples_per_epoch.values()) for c in result.concepts)
    assert summaries["acme/maeve"].held_out_image_count == 1 and summaries["acme/kiki"].held_out_image_count == 0
    maeve = [r for r in rows if r["concept_key"] == "acme/maeve" and r["task"] in ("vqa", "t2i")]
    held = {r["image_path"] or r["target_path"] for r in maeve if r["epoch"] == 1}
    assert len(held) == 1 and not held & {r["image_path"] or r["target_path"] for r in maeve if r["epoch"] == 0}
    bad_files = {"broken.png", "empty.png", "dup.png", "notes.txt", "huge.png"}
    for r in rows:
        concept = summaries[r["concept_key"]]
        assert r["data_digest"] == concept.data_digest
        text = r["prompt"] + " " + r["answer"]
        assert "<sks>" in text
        assert not re.search(rf"\b{re.escape(concept.display_name)}\b", text, re.IGNORECASE), text
        has_image, has_target = r["image"].size > 0, r["target_image"].size > 0
        assert (has_image, has_target) == {
            "recognition": (True, False), "vqa": (True, False), "text_qa": (False, False),
            "t2i": (False, True), "edit": (True, True),
        }[r["task"]]
        for array in (r["image"], r["target_image"]):
            assert array.dtype == np.uint8 and (array.shape == (64, 64, 3) or array.size == 0)
        assert Path(r["image_path"]).name not in bad_files and Path(r["target_path"]).name not in bad_files
        own_images = f"{UPLOADS}/{r['concept_key']}/images/"
        if r["task"] == "recognition" and r["answer"] == "Yes":
            assert own_images in r["image_path"]
        elif r["task"] == "recognition":
            assert r["answer"] == "No" and own_images not in r["image_path"]
            # Negatives come from the pool or the same tenant's other concepts only.
            tenant = r["concept_key"].split("/")[0]
            assert f"/{NEGATIVES}/" in f"/{r['image_path']}" or f"{UPLOADS}/{tenant}/" in r["image_path"]

    # Same config, same examples (the stream is recomputed, augmentation is seeded).
    again = build_ingest(cfg, server.storage_config()).dataset.take_all()
    key = lambda r: (r["concept_key"], r["epoch"], r["draw_index"])  # noqa: E731
    assert len(again) == len(rows) == len({key(r) for r in rows})  # as many rows, each key once
    columns = {"concept_key", "task", "prompt", "answer", "image", "target_image", "data_digest", "epoch",
               "draw_index", "image_path", "target_path"}
    for a, b in zip(sorted(rows, key=key), sorted(again, key=key)):
        assert a.keys() == b.keys() == columns
        for name in columns:  # every field, images bit for bit
            if isinstance(a[name], np.ndarray):
                assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, (key(a), name)
                assert np.array_equal(a[name], b[name]), (key(a), name)
            else:
                assert a[name] == b[name], (key(a), name)


def test_unifybench_import_runs_through_the_same_pipeline_on_a_local_folder(ray_session, tmp_path):
    """Local folders work like buckets; imported benchmark concepts train like uploaded ones."""
    from pipelines.ingest.unifybench import import_unifybench

    bench = tmp_path / "unifybench"
    for name, cls in (("bo", "dog"), ("mam", "cat")):
        for i in range(3):
            write(bench, f"concept/train/{name}/{i}.png", encode(photo(300 + 10 * len(name) + i)))
        write(bench, f"concept/train/{name}/info.json", json.dumps({"class": cls, "info": [f"<{name}> is fluffy."]}).encode())
        write(bench, f"concept/test/{name}/text_only.json", json.dumps([{"question": f"Is <{name}> fluffy?", "answer": "Yes."}]).encode())
    for i in range(3):
        write(bench, f"random_images/{i}.png", encode(photo(400 + i)))
    uploads, negatives = tmp_path / "uploads", tmp_path / "negatives"
    report = import_unifybench(str(bench), str(uploads), "bench", negatives_uri=str(negatives))
    assert report.imported == ["bench/bo", "bench/mam"]
    write(uploads, "bench/tab\tname/concept.json", concept_json("tab", "dog"))  # unsafe on disk too

    cfg = IngestConfig(uploads_uri=str(uploads), negatives_uri=f"file://{negatives}", vit_size=32, vae_size=48,
                       samples_per_task=3, tasks=("recognition", "text_qa", "t2i"))
    result = build_ingest(cfg)
    assert {(r.concept, r.reason.value) for r in result.quarantine.rows} == {("tab\tname", "unsafe_name")}
    assert [c.concept_key for c in result.concepts] == ["bench/bo", "bench/mam"]
    rows = result.dataset.take_all()
    assert len(rows) == 2 * 2 * (6 + 3 + 3)  # a training epoch and the gate's (3 images: none held out)
    t2i = [r for r in rows if r["task"] == "t2i"]
    assert t2i and all(r["target_image"].shape == (48, 48, 3) for r in t2i)
    assert any(r["prompt"] == "Tell me something about <sks>." and r["answer"] == "<sks> is fluffy." for r in rows)
