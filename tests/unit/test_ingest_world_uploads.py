"""The project's own uploads (the procedural world, the demo) pass ingest untouched.

Writers and the reader share `omnipersona.concepts.upload_schema`; these tests catch the two
drifting apart again (an extra field, a side file such as edits/edits.json, a name ingest refuses).
"""

from __future__ import annotations

import shutil

from jobs.demo import demo_config, write_demo_uploads
from omnipersona.world import make_concepts
from omnipersona.world.uploads import UploadOptions, write_uploads
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.quarantine import Reason
from tests.unit.ingest_in_process import ingest_in_process


def test_world_uploads_pass_ingest_without_a_single_quarantine_row(tmp_path):
    concepts = make_concepts(4, seed=3)
    options = UploadOptions(views=3, edits=2, pool_negatives=4)
    write_uploads({"acme": concepts[:2], "globex": concepts[2:]}, tmp_path / "uploads", options=options)
    # Every caller moves the pool out of the uploads root (see jobs/demo.py): "_negatives" is no tenant.
    shutil.move(tmp_path / "uploads" / "_negatives", tmp_path / "negatives")
    cfg = IngestConfig(uploads_uri=str(tmp_path / "uploads"), negatives_uri=str(tmp_path / "negatives"), vit_size=64, vae_size=64)

    materials, rows = ingest_in_process(cfg)

    assert rows == []
    assert sorted(m.concept_key for m in materials) == sorted(
        [f"acme/{c.name}" for c in concepts[:2]] + [f"globex/{c.name}" for c in concepts[2:]]
    )
    for m in materials:
        assert len(m.positives) == options.views
        assert len(m.edits) == options.edits  # every edit triplet of concept.json came through
        assert m.spec.display_name == m.id.concept


def test_demo_uploads_quarantine_only_the_deliberately_broken_one(tmp_path):
    write_demo_uploads(tmp_path)
    cfg = IngestConfig(**demo_config(tmp_path)["ingest"])

    materials, rows = ingest_in_process(cfg)

    assert [(r.concept_key, r.key, r.reason) for r in rows] == [
        ("globex/broken-upload", "globex/broken-upload/concept.json", Reason.BAD_CONCEPT_JSON)
    ]
    assert len(materials) == 5 and all(len(m.edits) == 2 for m in materials)
