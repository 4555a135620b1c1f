"""The one schema of an upload's ``concept.json``: what writers produce and what ingest accepts.

Readers (the ingest stage) and writers (the procedural world, the UnifyBench importer, the demo)
all go through `ConceptDescription`; `docs/data-layout.md` lists its fields and a unit test
compares the two. Extra fields are errors, so a misspelt ``atributes`` is reported, never ignored.

Edit triplets live in ``concept.json`` itself (``edits``): it is the one manifest of an upload.
The files they name sit directly under ``edits/``; any other file there is refused by ingest.

Texts may name the concept by its display name or by the placeholder ``<sks>``; ingest rewrites
the display name to ``<sks>`` (`to_placeholder`) so every example speaks about the placeholder.

Torch-free and Ray-free: data workers, writers and the CLI import it without the model.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
PLACEHOLDER = "<sks>"

# File and folder names inside <tenant>/<concept>/.
CONCEPT_JSON = "concept.json"
IMAGES_DIR = "images"
EDITS_DIR = "edits"
NEGATIVES_DIR = "negatives"
HELDOUT_DIR = "heldout"


def _no_control_chars(text: str) -> str:
    if any(unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\t" for ch in text):
        raise ValueError("must not contain control or invisible formatting characters")
    return text


def _must_mention_placeholder(text: str) -> str:
    if PLACEHOLDER not in text:
        raise ValueError(f"must contain the placeholder {PLACEHOLDER}")
    return text


def _edit_file(path: str) -> str:
    parts = path.split("/")
    if len(parts) != 2 or parts[0] != EDITS_DIR or parts[1] in ("", ".", "..") or "\\" in path:
        raise ValueError(f"must be a file directly under {EDITS_DIR}/ (e.g. '{EDITS_DIR}/0_source.png')")
    return _no_control_chars(path)


Text = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_no_control_chars)]
ShortText = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_control_chars)]
PlaceholderText = Annotated[Text, AfterValidator(_must_mention_placeholder)]
EditFile = Annotated[str, AfterValidator(_edit_file)]


class _Strict(BaseModel):
    # extra="forbid": a misspelt field is an error the user sees, not silently ignored data.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class QAPair(_Strict):
    question: Text
    answer: Text
    with_image: bool = Field(default=False, description="True: asked while showing a concept image (VQA).")


class UploadedEdit(_Strict):
    """One edit triplet: two files under ``edits/`` and the instruction that turns one into the other."""

    source: EditFile
    target: EditFile
    instruction: Text


class HeldOutVQA(_Strict):
    image: Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_no_control_chars)]
    question: Text
    answer: Text


class HeldOut(_Strict):
    """Evaluation-only material (never turned into training examples)."""

    text_qa: list[QAPair] = Field(default_factory=list)
    vqa: list[HeldOutVQA] = Field(default_factory=list)
    t2i_prompts: list[Text] = Field(default_factory=list)


class ConceptDescription(_Strict):
    """``concept.json``: who the concept is, in the user's words."""

    schema_version: Literal[1] = SCHEMA_VERSION
    display_name: ShortText = Field(description="Display name, e.g. 'maeve'.")
    class_word: ShortText = Field(description="What the concept is, e.g. 'dog'.")
    facts: list[Text] = Field(default_factory=list, description="Free-text attribute sentences.")
    attributes: dict[ShortText, Text] = Field(default_factory=dict, description="e.g. {'toy': 'black excavator'}")
    qa: list[QAPair] = Field(default_factory=list)
    captions: list[PlaceholderText] = Field(default_factory=list, description="Extra text-to-image captions.")
    recognition_questions: list[PlaceholderText] = Field(default_factory=list)
    edits: list[UploadedEdit] = Field(default_factory=list)
    heldout: HeldOut = Field(default_factory=HeldOut)

    def to_json_bytes(self) -> bytes:
        """The bytes every writer stores as ``concept.json`` (all fields, schema version included)."""
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")


class ConceptDescriptionError(ValueError):
    """concept.json could not be parsed or does not match the schema; the message is user-facing."""


def parse_concept_json(data: bytes) -> ConceptDescription:
    """Parse uploaded bytes; `ConceptDescriptionError` lists every problem at once."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConceptDescriptionError(f"concept.json is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConceptDescriptionError(
            f"concept.json is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(raw, dict):
        raise ConceptDescriptionError(f"concept.json must hold a JSON object, not {type(raw).__name__}")
    try:
        return ConceptDescription.model_validate(raw)
    except ValidationError as exc:
        raise ConceptDescriptionError("concept.json does not match the schema: " + format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def to_placeholder(text: str, display_name: str) -> str:
    """Replace whole-word mentions of the display name (any case, with possessive) by ``<sks>``."""
    pattern = re.compile(rf"(?<![\w<]){re.escape(display_name)}(?![\w>])", re.IGNORECASE)
    return pattern.sub(PLACEHOLDER, text)
