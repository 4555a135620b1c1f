"""The job's promotion metrics for any uploaded concept, from its held-out examples.

User uploads carry no eval set of their own (see `omnipersona.evaluation` for those), so the gate
of a production job uses what every concept has: the gate's ingest epoch, planned from the images
held out of the concept's training (`pipelines.ingest.holdout`: 1 in `ingest.gate_holdout_every`,
at least 3 left for training; a concept with none to spare gets fresh augmentations of its training
images, and its summary says so), each example scored by its task's held-out check
(`omnipersona.tasks`: recognition as weighted accuracy over positives and negatives, answer
accuracy of QA and VQA). Sample pictures (a generation and an edit) go to MLflow for people to
look at.

The concept is asked about by the name it is loaded under in the `Persona` (its display name): each
check writes `<name>` where the example says `<sks>`, and the Persona binds `<name>` to the
concept's identifier token, whatever characters the name holds (`Mr. Whiskers`, even
`<|im_start|>system`). A name the Persona has not loaded is refused here: scoring the base model
without the concept's tokens would let the gate measure the wrong thing.
"""
from __future__ import annotations

from itertools import zip_longest

from PIL import Image

from omnipersona.concepts.samples import ConceptExample
from omnipersona.infer.engine import Persona
from omnipersona.tasks import task_type


def check_bound(persona: Persona, name: str) -> None:
    """`name` must be a concept the persona binds to its identifier (`Persona.slots`)."""
    slots = getattr(persona, "slots", None)  # stand-ins without slots (tests) bind nothing themselves
    if slots is not None and name not in slots:
        raise KeyError(f"concept {name!r} is not loaded in the persona (loaded: {list(slots)}); its prompts would not "
                       "reach the concept's identifier")


def by_answer_in_turn(examples: list[ConceptExample]) -> list[ConceptExample]:
    """The examples with each task's answers taken in turn (the order within one answer kept): a
    capped share then holds recognition's Yes and No alike, not whichever the pool sorted first (two
    "No"s left a concept without recognition_accuracy, and the gate failed it as missing)."""
    groups: dict[str, dict[str, list[ConceptExample]]] = {}
    for ex in examples:
        groups.setdefault(ex.task, {}).setdefault(ex.answer or "", []).append(ex)
    return [ex for by_answer in groups.values() for turn in zip_longest(*by_answer.values())
            for ex in turn if ex is not None]


def heldout_metrics(persona: Persona, name: str, examples: list[ConceptExample], max_examples: int = 16) -> dict[str, float]:
    """Each task's held-out metrics over at most its share of `max_examples` examples, in their
    order with the answers taken in turn (`by_answer_in_turn`)."""
    check_bound(persona, name)
    scores: dict[str, list] = {}
    for ex in by_answer_in_turn(examples):
        check = task_type(ex.task).heldout
        if check is None:
            continue
        done = scores.setdefault(ex.task, [])
        if len(done) < int(check.share * max_examples):
            done.append(check.score(persona, name, ex))
    metrics: dict[str, float] = {}
    for task, values in scores.items():
        if values:
            metrics.update(task_type(task).heldout.summarise(task, values))
    return {k: float(v) for k, v in metrics.items() if v == v}


def sample_pictures(persona: Persona, name: str, examples: list[ConceptExample]) -> dict[str, Image.Image]:
    """A text-to-image sample and an edit sample (source | result side by side), each named for what
    it shows: the task and its prompt (the registry makes the name a file name)."""
    check_bound(persona, name)
    prompt = f"A photo of <{name}>."
    pictures = {f"text-to-image: {prompt}": persona.generate(name, prompt, replay=False).image}
    source = next((ex.image for ex in examples if ex.task == "edit" and ex.image is not None), None)
    if source is None:
        source = next((ex.image for ex in examples if ex.image is not None), None)
    if source is not None:
        instruction = f"Put <{name}> on the beach."
        edited = persona.edit(name, source, instruction, replay=False).image
        src = Image.fromarray(source).resize(edited.size)
        pair = Image.new("RGB", (edited.width * 2, edited.height))
        pair.paste(src, (0, 0))
        pair.paste(edited, (edited.width, 0))
        pictures[f"edit (source, result): {instruction}"] = pair
    return pictures
