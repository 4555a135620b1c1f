"""Snapshot digests identify a concept's data: stable, content-based, local to the concept."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipelines.ingest.config import IngestConfig
from pipelines.ingest.snapshot import content_digest, take_snapshot
from pipelines.storage import (
    StorageConfig,
    delete_prefix,
    filesystem_for,
    list_files,
    list_objects,
    read_bytes,
    write_bytes_atomic,
)


def write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    for concept in ("acme/maeve", "acme/bo"):
        write(root, f"{concept}/concept.json", b'{"display_name": "x", "class_word": "dog"}')
        write(root, f"{concept}/images/0.png", concept.encode() + b"-0")
        write(root, f"{concept}/images/1.png", concept.encode() + b"-1")
    write(root, "acme/maeve/notes.txt", b"not part of the layout")
    return root


def digests(root: Path, **kw) -> dict[str, str]:
    snapshot, _ = take_snapshot(IngestConfig(uploads_uri=str(root), vit_size=64, vae_size=64, **kw))
    return snapshot.digests()


def test_digest_is_stable_and_ignores_mtime(uploads):
    first = digests(uploads)
    os.utime(uploads / "acme/maeve/images/0.png", (1, 1))
    assert digests(uploads) == first
    assert set(first) == {"acme/maeve", "acme/bo"}


def test_digest_follows_content_and_names_of_that_concept_only(uploads):
    first = digests(uploads)
    (uploads / "acme/maeve/images/0.png").write_bytes(b"new pixels")
    changed = digests(uploads)
    assert changed["acme/maeve"] != first["acme/maeve"] and changed["acme/bo"] == first["acme/bo"]
    (uploads / "acme/bo/images/1.png").rename(uploads / "acme/bo/images/2.png")
    assert digests(uploads)["acme/bo"] != first["acme/bo"]


def test_objects_outside_the_layout_are_rejected_not_digested(uploads):
    snapshot, rejected = take_snapshot(IngestConfig(uploads_uri=str(uploads), vit_size=64, vae_size=64))
    assert [(r.key, r.reason.value) for r in rejected] == [("acme/maeve/notes.txt", "unexpected_object")]
    maeve = snapshot.concept("acme/maeve")
    assert [o.key for o in maeve.objects] == ["concept.json", "images/0.png", "images/1.png"]
    assert maeve.image_count == 2
    assert all(o.content_hash.startswith("sha256:") for o in maeve.objects)


def test_include_lists_only_the_named_concepts(uploads):
    assert set(digests(uploads, include=["acme/bo"])) == {"acme/bo"}
    assert digests(uploads, include=["acme/bo"])["acme/bo"] == digests(uploads)["acme/bo"]


def test_content_digest_is_order_free_and_unambiguous():
    pairs = [("images/0.png", "etag:a"), ("images/1.png", "etag:b")]
    assert content_digest(pairs) == content_digest(pairs[::-1])
    assert content_digest([("a", "bc")]) != content_digest([("ab", "c")])


def test_storage_helpers_on_a_local_folder(tmp_path):
    fs, root = filesystem_for(f"file://{tmp_path}/store")
    assert isinstance(fs, pafs.LocalFileSystem) and root == f"{tmp_path}/store"
    write_bytes_atomic(fs, f"{root}/a/b/c.bin", b"payload")
    write_bytes_atomic(fs, f"{root}/a/b/c.bin", b"payload-2")  # overwrite in place
    assert read_bytes(fs, f"{root}/a/b/c.bin") == b"payload-2"
    assert [i.path for i in list_files(fs, root)] == [f"{root}/a/b/c.bin"]  # no temp files left behind
    assert [(o.key, o.size, o.etag) for o in list_objects(str(tmp_path / "store"))] == [("a/b/c.bin", 9, None)]
    delete_prefix(fs, f"{root}/a")
    assert list_files(fs, root) == [] and list_files(fs, f"{root}/missing") == []


def test_filesystem_for_s3_uris_and_config():
    fs, path = filesystem_for(
        "s3://bucket/some/prefix/",
        StorageConfig(endpoint_override="127.0.0.1:9000", scheme="http", access_key="k", secret_key="s", region="us-east-1"),
    )
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/some/prefix"
    assert fs.region == "us-east-1"
    with pytest.raises(ValueError, match="together"):
        StorageConfig(access_key="only-one")
    with pytest.raises(ValueError, match="scheme"):
        filesystem_for("gs://bucket/x")
    shown = repr(StorageConfig(access_key="AKIDSECRET123", secret_key="VERYSECRET456"))
    assert "AKIDSECRET123" not in shown and "VERYSECRET456" not in shown  # secrets stay out of logs
