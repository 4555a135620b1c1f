"""The job's promotion metrics for any uploaded concept, from its held-out examples.

User uploads carry no attribute probe (that needs the generated world, see `harness.py`), so the
gate of a production job uses what every concept has: recognition (weighted accuracy over its
positives and negatives) and answer accuracy on its QA, measured on the ingest epoch that was held
out of training (fresh augmentations and negative draws of the concept's data). Sample pictures
(a generation and an edit) go to MLflow for people to look at.
"""
from __future__ import annotations

from PIL import Image

from omnipersona.concepts.samples import ConceptExample
from omnipersona.infer.engine import Persona
from pipelines.evaluate.metrics import answer_score, mean, weighted_recognition_accuracy


def heldout_metrics(persona: Persona, name: str, examples: list[ConceptExample], max_examples: int = 16) -> dict[str, float]:
    pos, neg, qa = [], [], {"text_qa": [], "vqa": []}
    for ex in examples:
        prompt = ex.prompt.replace("<sks>", f"<{name}>")
        if ex.task == "recognition" and len(pos) + len(neg) < max_examples:
            p = persona.understand(prompt, image=ex.image, max_new_tokens=1).yes_probability
            (pos if (ex.answer or "").lower().startswith("yes") else neg).append(p)
        elif ex.task in qa and len(qa[ex.task]) < max_examples // 2:
            said = persona.understand(prompt, image=ex.image if ex.task == "vqa" else None, max_new_tokens=16).text
            qa[ex.task].append(answer_score(said, (ex.answer or "").replace("<sks>", name)))
    metrics: dict[str, float] = {}
    if pos or neg:
        metrics.update(weighted_recognition_accuracy(pos, random_negatives=neg))
    for task, scores in qa.items():
        if scores:
            metrics[f"{task}_accuracy"] = mean(scores)
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
