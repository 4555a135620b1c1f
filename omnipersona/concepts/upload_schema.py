"""The one schema of an upload's ``concept.json``: what writers produce and what ingest accepts.

Readers (the ingest stage) and writers (the procedural world, the UnifyBench importer, the demo)
all go through `ConceptDescription`; `docs/data-layout.md` lists its fields and a unit test
compares the two. Extra fields are errors, so a misspelt ``atributes`` is reported, never ignored.

Edit triplets live in ``concept.json`` itself (``edits``): it is the one manifest of an upload.
The files they name sit directly under ``edits/``; any other file there is refused by ingest.

Texts may name the concept by its display name or by the placeholder ``<sks>``; ingest rewrites
the display name to ``<sks>`` (`to_placeholder`) so every example speaks about the placeholder.

The display name is how prompts name the concept (``<name>`` binds to its identifier token in
training, evaluation and inference), so it must be bindable (`display_name_problem`): 1-64
characters, at least one letter or digit, no ``<`` or ``>``, no control / invisible / unassigned
characters, words separated by single spaces, unchanged by Unicode NFKC. A name that is not is
reported as `DisplayNameError` (ingest's ``bad_display_name``), everything else as
`ConceptDescriptionError` (``bad_concept_json``).

Reading is strict about the bytes as well (`parse_concept_json`): UTF-8, with or without a byte
order mark; no duplicate keys, NaN/Infinity, oversized numbers, or nesting deeper than
`MAX_JSON_DEPTH`; JSON types as the schema says (``"with_image": "yes"`` is an error, not True).

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


MAX_JSON_DEPTH = 16  # the schema itself nests 4 levels (root -> heldout -> vqa -> item)
MAX_NUMBER_CHARS = 32  # the schema's only number is schema_version
MAX_LISTED_ERRORS = 20
DISPLAY_NAME_MAX = 64

# Characters no user text may hold: control (except newline and tab), invisible formatting (bidi
# overrides, zero-width), and lone surrogates (not text; they cannot even be written as UTF-8).
_FORBIDDEN_IN_TEXT = ("Cc", "Cf", "Cs")


def _no_control_chars(text: str) -> str:
    if any(unicodedata.category(ch) in _FORBIDDEN_IN_TEXT and ch not in "\n\t" for ch in text):
        raise ValueError("must not contain control or invisible formatting characters")
    return text


def display_name_problem(name: str) -> str | None:
    """Why `name` cannot be a display name (one that always binds to the concept's identifier), or None.

    The rule, in order: 1-64 characters (after stripping surrounding whitespace); no control,
    invisible formatting, private-use, unassigned or line/paragraph-separator character; no '<' or
    '>' (prompts write the name as `<name>`, so the name cannot hold the placeholder syntax, e.g.
    `<sks>` or `<|im_start|>`); words separated by single ordinary spaces; at least one letter or
    digit; unchanged by Unicode NFKC normalisation (no fullwidth, ligature or decomposed forms that
    look like another name).
    """
    if not name:
        return "must not be empty"
    if len(name) > DISPLAY_NAME_MAX:
        return f"must be at most {DISPLAY_NAME_MAX} characters (it has {len(name)})"
    bad = [ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")]
    if bad:
        codes = ", ".join(f"U+{ord(ch):04X}" for ch in dict.fromkeys(bad))
        return f"must not contain control or invisible formatting characters (found {codes})"
    if "<" in name or ">" in name:
        return ("must not contain '<' or '>': prompts write the name as <name>, so it cannot hold the "
                "placeholder syntax itself (such as <sks> or <|im_start|>)")
    odd_space = [ch for ch in name if ch.isspace() and ch != " "]
    if odd_space or "  " in name:
        codes = ", ".join(f"U+{ord(ch):04X}" for ch in dict.fromkeys(odd_space)) or "two spaces in a row"
        return f"may only separate words with single ordinary spaces (found {codes})"
    if not any(unicodedata.category(ch)[0] in "LN" for ch in name):
        return "must contain at least one letter or digit"
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:
        return (f"changes under Unicode NFKC normalisation (fullwidth, ligature, superscript or decomposed "
                f"characters); write it as {normal!r}")
    return None


def _bindable_display_name(name: str) -> str:
    problem = display_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


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
DisplayName = Annotated[str, Field(min_length=1, max_length=DISPLAY_NAME_MAX), AfterValidator(_bindable_display_name)]
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
    display_name: DisplayName = Field(description="Display name, e.g. 'maeve' (see `display_name_problem`).")
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


class DisplayNameError(ConceptDescriptionError):
    """concept.json is fine except that its display name cannot be bound (`display_name_problem`)."""


class _JsonProblem(ValueError):
    pass


_UTF8_BOM = b"\xef\xbb\xbf"
_OTHER_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))


def _nesting_depth(value: object) -> int:
    """Deepest nesting of arrays/objects in a parsed value (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _shown(value: str, limit: int = 40) -> str:
    """A user-given key or value for a message: quoted, escaped, cut short."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _JsonProblem(f"the key {_shown(key)} appears twice in one object (which value counts would be a guess)")
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str):
    raise _JsonProblem(f"{name} is not a JSON value")


def _number(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise _JsonProblem(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        value = kind(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise _JsonProblem(f"the number {text[:20]} is out of range")
        return value

    return parse


def _decode_json(data: bytes, max_bytes: int | None) -> object:
    if max_bytes is not None and len(data) > max_bytes:
        raise ConceptDescriptionError(f"concept.json is {len(data)} bytes, over {max_bytes}")
    if data.startswith(_UTF8_BOM):  # what Windows editors write; it is not part of the JSON
        data = data[len(_UTF8_BOM):]
    for bom, encoding in _OTHER_BOMS:
        if data.startswith(bom):
            raise ConceptDescriptionError(
                f"concept.json is not UTF-8 text: it starts with the {encoding} byte order mark {bom.hex()}; save it as UTF-8")
    if not data.strip():
        raise ConceptDescriptionError("concept.json is empty")
    if b"\x00" in data:
        raise ConceptDescriptionError(
            "concept.json is not UTF-8 text: it holds NUL bytes (UTF-16 without a byte order mark?); save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConceptDescriptionError(f"concept.json is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        raw = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                         parse_int=_number(int), parse_float=_number(float))
    except RecursionError:  # the C decoder stops cleanly at the interpreter's recursion limit
        raise ConceptDescriptionError(
            f"concept.json nests arrays/objects too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except _JsonProblem as exc:
        raise ConceptDescriptionError(f"concept.json is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConceptDescriptionError(
            f"concept.json is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:  # anything else the decoder refuses: still the user's file
        raise ConceptDescriptionError(f"concept.json is not valid JSON: {str(exc)[:200]}") from None
    depth = _nesting_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise ConceptDescriptionError(f"concept.json nests arrays/objects {depth} levels deep (at most {MAX_JSON_DEPTH})")
    return raw


def parse_concept_json(data: bytes, max_bytes: int | None = None) -> ConceptDescription:
    """Parse uploaded bytes; `ConceptDescriptionError` lists every problem at once (the first
    `MAX_LISTED_ERRORS`), `DisplayNameError` when the display name is the only problem.

    UTF-8 with or without a byte order mark. Refused with a reason: other encodings, more than
    `max_bytes`, duplicate keys, NaN/Infinity, numbers longer than `MAX_NUMBER_CHARS`, nesting
    deeper than `MAX_JSON_DEPTH`, trailing data, a top level that is not an object, and JSON types
    other than the schema's (no coercion: ``"with_image": "yes"`` or ``"facts": "x"`` are errors).
    """
    raw = _decode_json(data, max_bytes)
    if not isinstance(raw, dict):
        raise ConceptDescriptionError(f"concept.json must hold a JSON object, not {type(raw).__name__}")
    try:
        return ConceptDescription.model_validate(raw, strict=True)
    except ValidationError as exc:
        message = "concept.json does not match the schema: " + format_validation_error(exc)
        errors = exc.errors(include_url=False)
        if all(e["loc"][:1] == ("display_name",) and e["type"] not in ("missing", "string_type") for e in errors):
            raise DisplayNameError(message) from None
        raise ConceptDescriptionError(message) from None


def format_validation_error(exc: ValidationError) -> str:
    """`where: what` per error (user-given keys quoted and escaped), at most `MAX_LISTED_ERRORS`."""
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:MAX_LISTED_ERRORS]:
        where = ".".join(p if isinstance(p, str) and re.fullmatch(r"[A-Za-z0-9_]{1,40}|\[key\]", p) else
                         (str(p) if isinstance(p, int) else _shown(str(p))) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more")
    return "; ".join(parts)


def to_placeholder(text: str, display_name: str) -> str:
    """Replace mentions of the display name by ``<sks>``: written as a placeholder (``<maeve>``, the
    inference syntax) or as a whole word (any case, with possessive)."""
    if not display_name:
        return text
    bracketed = re.compile(rf"<{re.escape(display_name)}>", re.IGNORECASE)
    pattern = re.compile(rf"(?<![\w<]){re.escape(display_name)}(?![\w>])", re.IGNORECASE)
    return pattern.sub(PLACEHOLDER, bracketed.sub(PLACEHOLDER, text))
