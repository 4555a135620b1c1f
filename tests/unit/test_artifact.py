"""The concept artifact: one writer, one reader, checked on load."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import boto3
import pytest

from omnipersona.identity import ConceptId
import torch
from pyarrow import fs as pafs
from pydantic import BaseModel
from safetensors.torch import save_file

from omnipersona.concepts.artifact import (
    MANIFEST_FILE,
    TENSORS_FILE,
    ArtifactFormatError,
    ArtifactNotFoundError,
    BaseModelMismatchError,
    ConceptArtifact,
    ConceptManifest,
    UnsupportedFormatVersionError,
    artifact_subpath,
    config_hash,
)

HIDDEN = 16


def make_manifest(**overrides) -> ConceptManifest:
    fields = dict(
        tenant="acme",
        concept="rex",
        display_name="Rex the dog",
        class_word="dog",
        training_config_hash="0123456789abcdef",
        data_digest="d1g35t",
        base_model_id="bagel-tiny",
        base_fingerprint="fp-aaaa",
        metrics={"recognition_accuracy": 0.875, "loss_text": 0.25},
        created_at=datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc),
        extra={"note": "test"},
    )
    fields.update(overrides)
    return ConceptManifest(**fields)


def make_artifact(mode: str = "decoupled", num_gen: int = 4, **manifest_overrides) -> ConceptArtifact:
    g = torch.Generator().manual_seed(0)
    return ConceptArtifact(
        identifier=torch.randn(1, HIDDEN, generator=g),
        und_tokens=torch.randn(4, HIDDEN, generator=g),
        gen_tokens=torch.randn(num_gen, HIDDEN, generator=g),
        identifier_output=torch.randn(HIDDEN, generator=g),
        manifest=make_manifest(**manifest_overrides),
        mode=mode,
    )


def assert_same(a: ConceptArtifact, b: ConceptArtifact) -> None:
    for name in ("identifier", "und_tokens", "gen_tokens", "identifier_output"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == torch.float32
        assert x.shape == y.shape
        assert torch.equal(x.view(torch.int32), y.view(torch.int32)), name  # bit-equal
    assert a.manifest == b.manifest
    assert a.mode == b.mode


def test_round_trip_local_folder(tmp_path):
    artifact = make_artifact()
    folder = artifact.save(tmp_path / "acme" / "rex" / "d1g35t")
    assert sorted(p.name for p in (tmp_path / "acme" / "rex" / "d1g35t").iterdir()) == [TENSORS_FILE, MANIFEST_FILE]
    loaded = ConceptArtifact.load(folder, expected_fingerprint="fp-aaaa", expected_hidden_size=HIDDEN)
    assert_same(artifact, loaded)
    assert loaded.manifest.concept_id == "acme/rex"
    assert (loaded.hidden_size, loaded.num_und_tokens, loaded.num_gen_tokens) == (HIDDEN, 4, 4)


def test_manifest_json_is_stable(tmp_path):
    make_artifact().save(tmp_path / "a")
    make_artifact().save(tmp_path / "b")
    first = (tmp_path / "a" / MANIFEST_FILE).read_bytes()
    assert first == (tmp_path / "b" / MANIFEST_FILE).read_bytes()
    keys = list(json.loads(first))
    assert keys == sorted(keys)


def test_non_float32_input_is_stored_as_float32(tmp_path):
    artifact = make_artifact()
    artifact = ConceptArtifact(
        identifier=artifact.identifier.to(torch.bfloat16),
        und_tokens=artifact.und_tokens,
        gen_tokens=artifact.gen_tokens,
        identifier_output=artifact.identifier_output,
        manifest=artifact.manifest,
    )
    loaded = ConceptArtifact.load(artifact.save(tmp_path / "c"))
    assert loaded.identifier.dtype == torch.float32


def test_shared_mode_round_trip(tmp_path):
    artifact = make_artifact(mode="shared", num_gen=0)
    loaded = ConceptArtifact.load(artifact.save(tmp_path / "shared"))
    assert loaded.mode == "shared"
    assert tuple(loaded.gen_tokens.shape) == (0, HIDDEN)
    assert_same(artifact, loaded)


@pytest.mark.parametrize(("mode", "num_gen"), [("shared", 4), ("decoupled", 0)])
def test_mode_and_token_sets_must_agree(mode, num_gen):
    with pytest.raises(ValueError, match="gen_tokens"):
        make_artifact(mode=mode, num_gen=num_gen)


def test_wrong_shapes_rejected():
    a = make_artifact()
    with pytest.raises(ValueError, match="identifier_output"):
        ConceptArtifact(a.identifier, a.und_tokens, a.gen_tokens, torch.zeros(HIDDEN + 1), a.manifest)
    with pytest.raises(ValueError, match="und_tokens"):
        ConceptArtifact(a.identifier, torch.zeros(4, HIDDEN + 1), a.gen_tokens, a.identifier_output, a.manifest)


def test_mismatched_fingerprint_names_both_bases_and_the_fix(tmp_path):
    folder = make_artifact().save(tmp_path / "x")
    with pytest.raises(BaseModelMismatchError) as info:
        ConceptArtifact.load(folder, expected_fingerprint="fp-bbbb", expected_base_model_id="bagel-other")
    message = str(info.value)
    for needle in ("fp-aaaa", "fp-bbbb", "bagel-tiny", "bagel-other", "acme/rex", "retrain"):
        assert needle in message


def test_mismatched_hidden_size_is_a_base_mismatch(tmp_path):
    folder = make_artifact().save(tmp_path / "x")
    with pytest.raises(BaseModelMismatchError, match=f"hidden size {HIDDEN}"):
        ConceptArtifact.load(folder, expected_hidden_size=HIDDEN * 2)


@pytest.mark.parametrize("missing", [TENSORS_FILE, MANIFEST_FILE])
def test_missing_file_names_the_path(tmp_path, missing):
    folder = tmp_path / "x"
    make_artifact().save(folder)
    (folder / missing).unlink()
    with pytest.raises(ArtifactNotFoundError, match=str(folder / missing)):
        ConceptArtifact.load(folder)


def test_missing_folder_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ConceptArtifact.load(tmp_path / "nowhere")


def test_truncated_tensors_file_is_corrupt(tmp_path):
    folder = tmp_path / "x"
    make_artifact().save(folder)
    data = (folder / TENSORS_FILE).read_bytes()
    (folder / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactFormatError, match="corrupt concept tensors"):
        ConceptArtifact.load(folder)


def test_garbage_manifest_is_corrupt(tmp_path):
    folder = tmp_path / "x"
    make_artifact().save(folder)
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactFormatError, match="corrupt manifest"):
        ConceptArtifact.load(folder)


def test_files_from_two_artifacts_do_not_mix(tmp_path):
    make_artifact().save(tmp_path / "a")
    make_artifact(base_fingerprint="fp-other").save(tmp_path / "b")
    (tmp_path / "a" / MANIFEST_FILE).write_bytes((tmp_path / "b" / MANIFEST_FILE).read_bytes())
    with pytest.raises(ArtifactFormatError, match="different artifacts"):
        ConceptArtifact.load(tmp_path / "a")


def test_plain_safetensors_without_concept_metadata_is_rejected(tmp_path):
    folder = tmp_path / "x"
    make_artifact().save(folder)
    save_file({"identifier": torch.zeros(1, HIDDEN)}, folder / TENSORS_FILE)
    with pytest.raises(ArtifactFormatError, match="not a concept artifact"):
        ConceptArtifact.load(folder)


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    folder = tmp_path / "x"
    make_artifact().save(folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["format_version"] = "2"
    manifest["field_from_the_future"] = True
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedFormatVersionError, match="format_version 2.*upgrade omnipersona"):
        ConceptArtifact.load(folder)


def test_save_overwrites_and_leaves_no_temp_files(tmp_path):
    folder = tmp_path / "x"
    make_artifact().save(folder)
    newer = make_artifact(metrics={"recognition_accuracy": 1.0})
    newer.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == [TENSORS_FILE, MANIFEST_FILE]
    assert ConceptArtifact.load(folder).manifest.metrics == {"recognition_accuracy": 1.0}


def test_pyarrow_local_filesystem(tmp_path):
    local = pafs.LocalFileSystem()
    artifact = make_artifact()
    path = f"{tmp_path.as_posix()}/root/{artifact_subpath(ConceptId('acme', 'rex'), 'd1g35t', 'cfg0001', 'fp-aaaa')}"
    artifact.save(path, filesystem=local)
    names = sorted(i.base_name for i in local.get_file_info(pafs.FileSelector(path)))
    assert names == [TENSORS_FILE, MANIFEST_FILE]
    assert_same(artifact, ConceptArtifact.load(path, filesystem=local))
    with pytest.raises(ArtifactNotFoundError, match="missing"):
        ConceptArtifact.load(f"{tmp_path.as_posix()}/root/none", filesystem=local)


def test_s3_round_trip_on_a_local_s3_server():
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        creds = dict(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
        boto3.client("s3", endpoint_url=f"http://{host}:{port}", **creds).create_bucket(Bucket="concepts")
        s3 = pafs.S3FileSystem(
            endpoint_override=f"{host}:{port}", scheme="http", access_key="test", secret_key="test", region="us-east-1"
        )
        artifact = make_artifact()
        path = f"concepts/artifacts/{artifact_subpath(ConceptId('acme', 'rex'), 'd1g35t', 'cfg0001', 'fp-aaaa')}"
        artifact.save(path, filesystem=s3)
        keys = sorted(i.base_name for i in s3.get_file_info(pafs.FileSelector(path)))
        assert keys == [TENSORS_FILE, MANIFEST_FILE]  # temp keys are gone
        assert_same(artifact, ConceptArtifact.load(path, filesystem=s3, expected_fingerprint="fp-aaaa"))
    finally:
        server.stop()


def test_manifest_validates_ids():
    with pytest.raises(ValueError, match="tenant"):
        make_manifest(tenant="Acme Corp")
    with pytest.raises(ValueError, match="concept"):
        make_manifest(concept="rex/../x")
    with pytest.raises(ValueError, match="does not match"):
        make_manifest(concept_id="other/rex")


def test_config_hash_is_canonical():
    class Cfg(BaseModel):
        lr: float = 1e-3
        steps: int = 2000

    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert config_hash(Cfg()) == config_hash({"steps": 2000, "lr": 1e-3})
    assert len(config_hash(Cfg())) == 16
