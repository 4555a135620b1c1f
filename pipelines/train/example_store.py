"""The job's training examples, written once by ingest and read per pack by the train workers.

Ray Data streams the ingest dataset into Parquet files partitioned by concept (no groupby, no
shuffle: `write_parquet(partition_cols=...)` splits each block as it is written). Images are stored
PNG-encoded so the files are small and readable by plain pyarrow. A train worker then reads only
the partitions of the concepts in its current pack, so worker memory depends on the pack size,
never on the number of concepts in the job.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from PIL import Image

from omnipersona.concepts.samples import ConceptExample
from omnipersona.training import ConceptPool

PARTITION = "concept_part"


def concept_part(concept_key: str) -> str:
    """A path-safe, collision-resistant partition value for a concept key."""
    return hashlib.sha256(concept_key.encode()).hexdigest()[:20]


def _png(image: np.ndarray) -> bytes:
    if image is None or image.size == 0:
        return b""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray | None:
    if not data:
        return None
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encode_batch(batch: dict) -> dict:
    """Ray Data `map_batches` fn: images -> PNG bytes, plus the partition column."""
    keys = list(batch["concept_key"])
    return {
        "concept_key": np.asarray(keys, dtype=object),
        PARTITION: np.asarray([concept_part(k) for k in keys], dtype=object),
        "task": np.asarray(batch["task"], dtype=object),
        "epoch": np.asarray(batch["epoch"], dtype=np.int64),
        "prompt": np.asarray(batch["prompt"], dtype=object),
        "answer": np.asarray(batch["answer"], dtype=object),
        "image_png": np.asarray([_png(i) for i in batch["image"]], dtype=object),
        "target_png": np.asarray([_png(i) for i in batch["target_image"]], dtype=object),
    }


def write_examples(dataset, fs: pafs.FileSystem, path: str) -> None:
    """Stream an ingest dataset to `path` (Parquet, one folder per concept)."""
    encoded = dataset.map_batches(encode_batch, batch_format="numpy", batch_size=64)
    encoded.write_parquet(path, filesystem=fs, partition_cols=[PARTITION])


def read_pools(fs: pafs.FileSystem, path: str, concept_keys: list[str], exclude_epochs: list[int] | None = None,
               only_epochs: list[int] | None = None) -> list[ConceptPool]:
    """The example pools of `concept_keys`, in that order (slot = position).

    `exclude_epochs` keeps held-out epochs out of training; `only_epochs` reads just those.
    """
    by_key = _read_examples(fs, path, concept_keys, exclude_epochs, only_epochs)
    return [ConceptPool(k, by_key[k]) for k in concept_keys]


def read_heldout_pools(fs: pafs.FileSystem, path: str, concept_keys: list[str], epochs: list[int]) -> list[ConceptPool | None]:
    """The examples of the held-out `epochs` (the gate's) of `concept_keys`, in that order; None for a
    concept with none there (what early stopping checks)."""
    by_key = _read_examples(fs, path, concept_keys, None, epochs)
    return [ConceptPool(k, by_key[k]) if by_key[k] else None for k in concept_keys]


def _read_examples(fs: pafs.FileSystem, path: str, concept_keys: list[str], exclude_epochs: list[int] | None,
                   only_epochs: list[int] | None) -> dict[str, list[ConceptExample]]:
    parts = [concept_part(k) for k in concept_keys]
    ds = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    expr = pc.field(PARTITION).isin(parts)
    if exclude_epochs:
        expr = expr & ~pc.field("epoch").isin(exclude_epochs)
    if only_epochs is not None:
        expr = expr & pc.field("epoch").isin(only_epochs)
    table = ds.to_table(filter=expr)
    rows = table.select(["concept_key", "task", "prompt", "answer", "image_png", "target_png"]).to_pylist()
    by_key: dict[str, list[ConceptExample]] = {k: [] for k in concept_keys}
    for r in rows:
        if r["concept_key"] not in by_key:
            continue  # a hash collision would land here; the key column is the truth
        by_key[r["concept_key"]].append(
            ConceptExample(
                slot=0,
                task=r["task"],
                prompt=r["prompt"],
                answer=r["answer"] or None,
                image=_unpng(r["image_png"]),
                target=_unpng(r["target_png"]),
            )
        )
    # Deterministic order inside a pool whatever the file order on disk.
    for key, exs in by_key.items():
        exs.sort(key=lambda e: (e.task, e.prompt, e.answer or "", hashlib.sha256(
            (e.image.tobytes() if e.image is not None else b"") + (e.target.tobytes() if e.target is not None else b"")
        ).hexdigest()))
    return by_key
