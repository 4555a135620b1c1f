"""The ingest stage's decisions without Ray: the validation batch function is called in process.

Mirrors `pipelines.ingest.dataset.build_ingest` up to the plan (snapshot -> select -> validate ->
merge -> decide), so unit tests see every quarantine row a real run would report.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.ingest.accept import Validated, decide, merge_results, select_objects
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.examples import ConceptMaterial
from pipelines.ingest.features import colour_histogram_features
from pipelines.ingest.quarantine import QuarantineRow, Reason
from pipelines.ingest.snapshot import take_snapshot
from pipelines.ingest.validate import validate_batch
from pipelines.storage import filesystem_for


def ingest_in_process(cfg: IngestConfig, *, mutate=None) -> tuple[list[ConceptMaterial], list[QuarantineRow]]:
    """Accepted concepts and every quarantine row, for local folders; `mutate()` runs between listing and reading."""
    fs, _ = filesystem_for(cfg.uploads_uri)
    snapshot, layout_rows = take_snapshot(cfg)
    selection = select_objects(snapshot, fs, cfg)
    if mutate:
        mutate()
    paths = [c.obj.path for c in selection.candidates if Path(c.obj.path).exists()]
    batch = validate_batch(
        {"bytes": [Path(p).read_bytes() for p in paths], "path": paths},
        limits=cfg.limits, feature_fn=colour_histogram_features, feature_size=cfg.feature_size,
    )
    raw = {}
    for i, path in enumerate(batch["path"]):
        reason = Reason(batch["reason"][i]) if batch["reason"][i] else None
        raw[path] = (int(batch["nbytes"][i]), Validated(batch["sha256"][i], reason, batch["message"][i], batch["feature"][i]))
    materials, rows = decide(snapshot, selection, merge_results(selection.candidates, raw), cfg)
    return materials, layout_rows + selection.rows + rows
