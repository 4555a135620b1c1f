"""The on-disk contract of world evaluation sets, and the world's file names inside uploads.

Uploads (what a user hands in), read by the ingest stage; concept.json is the library's one upload
schema, `omnipersona.concepts.upload_schema.ConceptDescription` (edit triplets included):
    <root>/<tenant>/<concept>/concept.json          -> `ConceptDescription`
    <root>/<tenant>/<concept>/images/000.png ...
    <root>/<tenant>/<concept>/edits/000_source.png, 000_target.png
    <root>/_negatives/images/000.png ...            shared pool of random negatives (move it out before ingest)
Held-out evaluation (never next to the uploads):
    <eval_root>/<tenant>/<concept>/manifest.json    -> `EvalManifest`
    <eval_root>/<tenant>/<concept>/{views,hard_negatives,random_negatives,parg}/NNN.png

All paths inside a JSON file are relative to the folder that holds it. Texts name the concept by
its display name (as a user would): ingest replaces it with the concept's identifier token.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

POOL_DIR = "_negatives"  # the shared negative pool; no tenant can have this name (leading '_')
MANIFEST_FILE = "manifest.json"


def image_name(index: int) -> str:
    return f"{index:03d}.png"


def edit_names(index: int) -> tuple[str, str]:
    return f"{index:03d}_source.png", f"{index:03d}_target.png"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalView(_Record):
    file: str
    background: str
    prompt: str  # personalised text-to-image prompt for this view ("a photo of maeve on grass")


class EvalNegative(_Record):
    file: str
    description: str  # caption of what the negative shows
    differs_in: str | None = None  # hard negatives: the one visible attribute that differs


class EvalFact(_Record):
    attribute: str
    question: str
    answer: str
    visible: bool  # readable off the reference images, or a private fact


class EvalParg(_Record):
    attribute: str
    request: str
    question: str
    answer: str
    rewritten: str
    reference: str  # image of the concept with the item, for an image-similarity check


class EvalManifest(_Record):
    """manifest.json of one concept's held-out evaluation set."""

    concept: str
    display_name: str
    class_word: str
    attributes: dict[str, str]
    views: list[EvalView]
    hard_negatives: list[EvalNegative]
    random_negatives: list[EvalNegative]
    facts: list[EvalFact]
    parg: list[EvalParg]
