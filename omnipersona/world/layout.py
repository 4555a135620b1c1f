"""The on-disk contract of world uploads and evaluation sets: field names and file names, in one place.

Uploads (what a user hands in), read by the ingest stage:
    <root>/<tenant>/<concept>/concept.json          -> `ConceptUpload`
    <root>/<tenant>/<concept>/images/000.png ...
    <root>/<tenant>/<concept>/edits/000_source.png, 000_target.png, edits.json (-> list of `EditRecord`)
    <root>/_negatives/images/000.png ...            shared pool of random negatives
Held-out evaluation (never next to the uploads):
    <eval_root>/<tenant>/<concept>/manifest.json    -> `EvalManifest`
    <eval_root>/<tenant>/<concept>/{views,hard_negatives,random_negatives,parg}/NNN.png

All paths inside a JSON file are relative to the folder that holds it. Texts name the concept by
its display name (as a user would): ingest replaces it with the concept's identifier token.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

CONCEPT_FILE = "concept.json"
IMAGES_DIR = "images"
EDITS_DIR = "edits"
EDITS_FILE = "edits.json"
NEGATIVES_DIR = "_negatives"  # a tenant may not use this name
MANIFEST_FILE = "manifest.json"


def image_name(index: int) -> str:
    return f"{index:03d}.png"


def edit_names(index: int) -> tuple[str, str]:
    return f"{index:03d}_source.png", f"{index:03d}_target.png"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QAPair(_Record):
    question: str
    answer: str


class EditRecord(_Record):
    source: str  # relative path, e.g. "edits/000_source.png"
    instruction: str
    target: str


class ConceptUpload(_Record):
    """concept.json of an upload."""

    display_name: str
    class_word: str
    facts: list[str]
    attributes: dict[str, str]
    qa: list[QAPair]
    edits: list[EditRecord] = []


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
