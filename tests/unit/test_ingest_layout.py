"""Upload keys are classified, or rejected before they are ever used as a path."""

from __future__ import annotations

import pytest

from pipelines.ingest.config import IngestConfig
from omnipersona.identity import ConceptId
from pipelines.ingest.layout import UploadKey, parse_pool_key, parse_upload_key
from pipelines.ingest.quarantine import QuarantineRow, Reason


@pytest.mark.parametrize(
    "key, role, rel",
    [
        ("acme/maeve/concept.json", "concept_json", "concept.json"),
        ("acme/maeve/images/IMG 0001 (2).JPG", "image", "images/IMG 0001 (2).JPG"),
        ("acme/maeve/edits/0_src.png", "edit", "edits/0_src.png"),
        ("acme/maeve/negatives/cat.png", "negative", "negatives/cat.png"),
        ("acme/maeve/heldout/images/0.png", "heldout", "heldout/images/0.png"),
        ("t-1/c_2/images/.DS_Store", "image", "images/.DS_Store"),  # read, then refused as not an image
    ],
)
def test_layout_roles(key, role, rel):
    parsed = parse_upload_key(key)
    assert isinstance(parsed, UploadKey)
    assert (parsed.role, parsed.rel) == (role, rel)
    assert parsed.id == ConceptId.parse("/".join(key.split("/")[:2]))


@pytest.mark.parametrize(
    "key, tenant, concept, reason",
    [
        ("acme/../other-tenant/concept.json", "acme", "..", Reason.UNSAFE_NAME),
        ("acme/maeve/images/../../globex/rex/images/0.png", "acme", "maeve", Reason.UNSAFE_NAME),
        ("acme/..%2Fother-tenant/concept.json", "acme", "..%2Fother-tenant", Reason.UNSAFE_NAME),
        ("acme/bad\x01name/concept.json", "acme", "bad\x01name", Reason.UNSAFE_NAME),
        ("acme/maeve/images/evil\u202egnp.exe", "acme", "maeve", Reason.UNSAFE_NAME),  # right-to-left override
        ("acme/maeve/images\\0.png", "acme", "maeve", Reason.UNSAFE_NAME),
        ("acme//maeve/concept.json", "acme", "", Reason.UNSAFE_NAME),
        ("Acme/maeve/concept.json", "Acme", "maeve", Reason.UNSAFE_NAME),  # would collide with "acme"
        ("acme/Maeve/concept.json", "acme", "Maeve", Reason.UNSAFE_NAME),
        ("acme/a.b/concept.json", "acme", "a.b", Reason.UNSAFE_NAME),
        ("acme/" + "x" * 64 + "/concept.json", "acme", "x" * 64, Reason.UNSAFE_NAME),
        ("acme/rex\n/concept.json", "acme", "rex\n", Reason.UNSAFE_NAME),
        ("acme/-rex/concept.json", "acme", "-rex", Reason.UNSAFE_NAME),
        ("readme.txt", None, None, Reason.UNEXPECTED_OBJECT),
        ("acme/readme.txt", "acme", None, Reason.UNEXPECTED_OBJECT),
        ("acme/maeve/photo.png", "acme", "maeve", Reason.UNEXPECTED_OBJECT),
        ("acme/maeve/images/sub/0.png", "acme", "maeve", Reason.UNEXPECTED_OBJECT),
    ],
)
def test_rejected_keys(key, tenant, concept, reason):
    row = parse_upload_key(key)
    assert isinstance(row, QuarantineRow)
    assert (row.tenant, row.concept, row.key, row.reason) == (tenant, concept, key, reason)
    assert row.message


def test_pool_keys_allow_depth_but_not_traversal():
    assert parse_pool_key("unifybench/0.png") is None
    assert parse_pool_key("a/../b.png").reason == Reason.UNSAFE_NAME


def test_include_filter_refuses_unsafe_keys_at_config_time():
    assert IngestConfig(uploads_uri="/tmp/u", vit_size=64, vae_size=64, include=["acme/maeve"]).include == ["acme/maeve"]
    for bad in ("acme", "acme/../x", "../acme/maeve", "acme/Maeve"):
        with pytest.raises(ValueError):
            IngestConfig(uploads_uri="/tmp/u", vit_size=64, vae_size=64, include=[bad])
