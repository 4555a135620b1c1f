"""The job's promotion metrics for any uploaded concept, from its held-out examples.

User uploads carry no eval set of their own (see `omnipersona.evaluation` for those), so the gate
of a production job uses what every concept has: the ingest epoch that was held out of training
(fresh augmentations and negative draws of the concept's data), each example scored by its task's
held-out check (`omnipersona.tasks`: recognition as weighted accuracy over positives and
negatives, answer accuracy of QA and VQA). Sample pictures (a generation and an edit) go to MLflow
for people to look at.
"""
from __future__ import annotations

from PIL import Image

from omnipersona.concepts.samples import ConceptExample
from omnipersona.infer.engine import Persona
from omnipersona.tasks import task_type


def heldout_metrics(persona: Persona, name: str, examples: list[ConceptExample], max_examples: int = 16) -> dict[str, float]:
    """Each task's held-out metrics over at most its share of `max_examples` examples, in their order."""
    scores: dict[str, list] = {}
    for ex in examples:
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
    """A text-to-image sample and an edit sample (source | result side by side)."""
    pictures = {"generation.png": persona.generate(name, f"A photo of <{name}>.", replay=False).image}
    source = next((ex.image for ex in examples if ex.task == "edit" and ex.image is not None), None)
    if source is None:
        source = next((ex.image for ex in examples if ex.image is not None), None)
    if source is not None:
        edited = persona.edit(name, source, f"Put <{name}> on the beach.", replay=False).image
        src = Image.fromarray(source).resize(edited.size)
        pair = Image.new("RGB", (edited.width * 2, edited.height))
        pair.paste(src, (0, 0))
        pair.paste(edited, (edited.width, 0))
        pictures["edit.png"] = pair
    return pictures
