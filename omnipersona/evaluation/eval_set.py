"""A concept's held-out evaluation set: what the harness asks, shows and compares against.

Any source fills one (the procedural world: `omnipersona.world.eval_sets`; a job reads them with
the reader its config names, see `plugins.py`). Texts are templates naming the concept as
`<{name}>`; `fill_name` puts the concept's name in. Nothing here says how pictures are judged:
`PargCase.item_kind` and `EditCase.requested` are what a judge (`harness.ImageJudge`) should see.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from PIL import Image

NAME_TEMPLATE = "<{name}>"


@dataclass(frozen=True)
class QA:
    question: str  # names the concept as <name>
    answer: str
    attribute: str = ""
    image: Image.Image | None = None
    group: str = ""  # text QA: scored on its own as `text_qa_<group>` too (see ConceptEvalSet.text_qa_groups)


@dataclass(frozen=True)
class PargCase:
    attribute: str  # toy / favourite_food / home
    request: str  # "a photo of <name> with its toy"
    answer: str  # the fact replay should recall: "a black drum"
    item_kind: str  # what the picture must show: "drum"
    reference: Image.Image | None = None


@dataclass(frozen=True)
class EditCase:
    kind: str  # the source's edit kind, e.g. remove / background / accessory
    instruction: str
    source: Image.Image
    requested: dict[str, str]  # the concept's attributes, with the requested change applied


@dataclass
class ConceptEvalSet:
    name: str  # the concept's name as the persona under test knows it
    class_word: str
    attributes: dict[str, str]
    views: list[Image.Image]
    hard_negatives: list[Image.Image] = field(default_factory=list)
    random_negatives: list[Image.Image] = field(default_factory=list)
    text_qa: list[QA] = field(default_factory=list)
    vqa: list[QA] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    parg: list[PargCase] = field(default_factory=list)
    edits: list[EditCase] = field(default_factory=list)
    # Groups of text QA reported on their own (a group left without questions still reports, as NaN).
    text_qa_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalOptions:
    """How much of a concept's held-out material to use, and the image side the model sees."""

    views: int = 4
    hard_negatives: int = 4
    random_negatives: int = 4
    vqa_per_view: int = 5
    generations: int = 3
    edits: int = 3
    image_size: int = 32


def _named(text: str, name: str) -> str:
    return text.replace(NAME_TEMPLATE, f"<{name}>")


def fill_name(eval_set: ConceptEvalSet) -> ConceptEvalSet:
    """The set with `eval_set.name` put into every template (in place; returned for chaining)."""
    n = eval_set.name
    eval_set.text_qa = [replace(q, question=_named(q.question, n)) for q in eval_set.text_qa]
    eval_set.vqa = [replace(q, question=_named(q.question, n)) for q in eval_set.vqa]
    eval_set.generation_prompts = [_named(p, n) for p in eval_set.generation_prompts]
    eval_set.parg = [replace(p, request=_named(p.request, n)) for p in eval_set.parg]
    eval_set.edits = [replace(e, instruction=_named(e.instruction, n)) for e in eval_set.edits]
    return eval_set
