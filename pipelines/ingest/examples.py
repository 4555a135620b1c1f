"""Text-level training examples per concept, planned on the driver (no pixels here).

A plan row names the image files an example needs and the seed parts of its augmentation; the
dataset stage reads, augments and emits it. Per concept and epoch every enabled task gets exactly
``samples_per_task`` examples (recognition: that many positives AND that many negatives), and images
are drawn as concatenated random permutations, so every image is used about equally often.
Every text uses the placeholder ``<sks>`` for the concept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from omnipersona.concepts.upload_schema import PLACEHOLDER, ConceptDescription, to_placeholder
from omnipersona.identity import ConceptId
from pipelines.ingest.augment import rng_for
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.holdout import gate_epoch

S = PLACEHOLDER
RECOGNITION_QUESTIONS = (f"Is {S} in this image?", f"Can you see {S} in this photo?", f"Does this picture show {S}?")
YES, NO = "Yes", "No"


@dataclass
class ConceptMaterial:
    """Everything the planner needs about one accepted concept (paths are filesystem paths).

    `positives` and `edits` are what training may use; `held_out` and `held_out_edits` only the
    gate's epoch (`pipelines.ingest.holdout`)."""

    id: ConceptId
    digest: str
    spec: ConceptDescription
    positives: list[str]
    hard_negatives: list[str] = field(default_factory=list)
    random_negatives: list[str] = field(default_factory=list)
    edits: list[tuple[str, str, str]] = field(default_factory=list)  # (source path, target path, instruction)
    notes: list[str] = field(default_factory=list)  # what `decide` had to cap (shown in the concept's summary)
    held_out: list[str] = field(default_factory=list)  # images kept out of training for the gate
    held_out_edits: list[tuple[str, str, str]] = field(default_factory=list)  # edits showing a held-out image

    @property
    def concept_key(self) -> str:
        return self.id.key

    def for_gate(self) -> "ConceptMaterial":
        """What the gate's epoch is planned from: the held-out images (and their edits), or, when
        nothing is held out, the training images again (the concept's notes say so)."""
        if not self.held_out:
            return self
        return replace(self, positives=list(self.held_out), edits=list(self.held_out_edits))


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _texts(spec: ConceptDescription) -> dict[str, list[tuple[str, str]]]:
    """Question/answer (or prompt) pairs per task, templated from concept.json."""
    name, cls = spec.display_name, spec.class_word
    a_cls = f"{_article(cls)} {cls}"

    def p(text: str) -> str:
        return to_placeholder(text, name)

    facts = [p(f) for f in spec.facts]
    text_qa = [(f"What is {S}?", f"{S} is {a_cls}.")]
    text_qa += [(f"What is the {k} of {S}?", f"The {k} of {S} is {p(v)}.") for k, v in spec.attributes.items()]
    text_qa += [(f"Tell me something about {S}.", fact) for fact in facts]
    text_qa += [(p(qa.question), p(qa.answer)) for qa in spec.qa if not qa.with_image]

    describe = f"This is {S}, {a_cls}." + (f" {facts[0]}" if facts else "")
    vqa = [
        (f"What is the name of the {cls} in this image?", f"This is {S}."),
        (f"Describe the {cls} in this image.", describe),
    ]
    vqa += [(p(qa.question), p(qa.answer)) for qa in spec.qa if qa.with_image]

    t2i = [(f"A photo of {S}.", ""), (f"A photo of {S}, {a_cls}.", ""), (f"An image of {S}.", "")]
    t2i += [(p(c), "") for c in spec.captions]
    recognition = [(q, "") for q in RECOGNITION_QUESTIONS + tuple(p(q) for q in spec.recognition_questions)]
    return {"text_qa": text_qa, "vqa": vqa, "t2i": t2i, "recognition": recognition}


def cycle_draw(items: list[Any], n: int, rng: np.random.Generator) -> list[Any]:
    """``n`` items as concatenated random permutations (balanced use, no long repeats)."""
    if not items or n <= 0:
        return []
    out: list[Any] = []
    while len(out) < n:
        out.extend(items[i] for i in rng.permutation(len(items)))
    return out[:n]


@dataclass
class _Planning:
    """What a task's planner draws from, for one concept and epoch (`add` appends a plan row)."""

    material: ConceptMaterial
    cfg: IngestConfig
    texts: dict[str, list[tuple[str, str]]]
    rng: np.random.Generator
    add: Callable[..., None]
    notes: list[str]


def _plan_recognition(p: _Planning) -> None:
    """`samples_per_task` positives and as many negatives (hard ones first, by `hard_negative_fraction`)."""
    n, hard, rand = p.cfg.samples_per_task, p.material.hard_negatives, p.material.random_negatives
    if not hard and not rand:
        p.notes.append("recognition left out: no negative images available (no pool, no other concepts)")
        return
    questions = [q for q, _ in p.texts["recognition"]]
    n_hard = round(n * p.cfg.hard_negative_fraction) if hard else 0
    n_hard = n if not rand else n_hard
    negatives = cycle_draw(hard, n_hard, p.rng) + cycle_draw(rand, n - n_hard, p.rng)
    for image, question in zip(cycle_draw(p.material.positives, n, p.rng), cycle_draw(questions, n, p.rng)):
        p.add("recognition", question, YES, image=image)
    for image, question in zip(negatives, cycle_draw(questions, n, p.rng)):
        p.add("recognition", question, NO, image=image)


def _plan_vqa(p: _Planning) -> None:
    n = p.cfg.samples_per_task
    for (q, a), image in zip(cycle_draw(p.texts["vqa"], n, p.rng), cycle_draw(p.material.positives, n, p.rng)):
        p.add("vqa", q, a, image=image)


def _plan_text_qa(p: _Planning) -> None:
    for q, a in cycle_draw(p.texts["text_qa"], p.cfg.samples_per_task, p.rng):
        p.add("text_qa", q, a)


def _plan_t2i(p: _Planning) -> None:
    n = p.cfg.samples_per_task
    for (prompt, _), target in zip(cycle_draw(p.texts["t2i"], n, p.rng), cycle_draw(p.material.positives, n, p.rng)):
        p.add("t2i", prompt, "", target=target)


def _plan_edit(p: _Planning) -> None:
    for source, target, instruction in cycle_draw(p.material.edits, p.cfg.samples_per_task, p.rng):
        p.add("edit", to_placeholder(instruction, p.material.spec.display_name), "", image=source, target=target)


# Ingest's half of a task type (the library's half is its entry in `omnipersona.tasks`): how a
# concept's uploads become examples of the task. `IngestConfig.tasks` may only name tasks listed here.
TASK_PLANNERS: dict[str, Callable[[_Planning], None]] = {
    "recognition": _plan_recognition,
    "vqa": _plan_vqa,
    "text_qa": _plan_text_qa,
    "t2i": _plan_t2i,
    "edit": _plan_edit,
}


def plan_concept_epoch(material: ConceptMaterial, cfg: IngestConfig, epoch: int) -> tuple[list[dict], list[str]]:
    """Plan rows for one concept and epoch, plus notes about tasks that had to be left out."""
    rng = rng_for("plan", cfg.seed, material.concept_key, epoch)
    texts = _texts(material.spec)
    notes: list[str] = []
    rows: list[dict] = []

    def add(task: str, prompt: str, answer: str, image: str = "", target: str = "") -> None:
        rows.append(
            {
                "concept_key": material.concept_key,
                "task": task,
                "prompt": prompt,
                "answer": answer,
                "image_path": image,
                "target_path": target,
                "epoch": epoch,
                "draw_index": len(rows),
                "data_digest": material.digest,
            }
        )

    planning = _Planning(material, cfg, texts, rng, add, notes)
    for task, plan in TASK_PLANNERS.items():  # a fixed order: each task's draws follow the previous task's
        if task in cfg.tasks:
            plan(planning)

    order = rng_for("order", cfg.seed, material.concept_key, epoch).permutation(len(rows))
    return [rows[i] for i in order], notes


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def cap_notes(material: ConceptMaterial, cfg: IngestConfig, rows_by_epoch: list[list[dict]]) -> list[str]:
    """What the per-epoch caps left unused, in words for the concept's summary (nothing when all is used).

    Each task draws exactly `samples_per_task` examples per epoch, so a concept with many images,
    edits or texts has only part of them in a job (e.g. "400 images, at most 24 used per epoch")."""
    notes: list[str] = []
    n, epochs = cfg.samples_per_task, len(rows_by_epoch)
    how = f"each task draws samples_per_task={n} examples per epoch; raise ingest.samples_per_task or ingest.epochs to use more"

    def count(used_by_epoch: list[set], available: int, what: str) -> None:
        everything = set().union(*used_by_epoch) if used_by_epoch else set()
        if len(everything) < available:
            per_epoch = max((len(u) for u in used_by_epoch), default=0)
            notes.append(f"{available} {what}, at most {per_epoch} used per epoch ({len(everything)} over "
                         f"{_epochs(epochs)}): {how}")

    positives = set(material.positives)
    count([{p for r in rows for p in (r["image_path"], r["target_path"]) if p in positives} for rows in rows_by_epoch],
          len(positives), "images")
    if "edit" in cfg.tasks and material.edits:
        count([{(r["image_path"], r["target_path"], r["prompt"]) for r in rows if r["task"] == "edit"} for rows in rows_by_epoch],
              len({(src, tgt, to_placeholder(text, material.spec.display_name)) for src, tgt, text in material.edits}),
              "edit triplets")
    texts = _texts(material.spec)
    for task, what in (("text_qa", "text questions and answers"), ("vqa", "image questions and answers"),
                       ("t2i", "text-to-image prompts"), ("recognition", "recognition questions")):
        if task not in cfg.tasks:
            continue
        pairs = {q for q, _ in texts[task]} if task in ("t2i", "recognition") else set(texts[task])
        used = [{r["prompt"] if task in ("t2i", "recognition") else (r["prompt"], r["answer"]) for r in rows if r["task"] == task}
                for rows in rows_by_epoch]
        if any(used):
            count(used, len(pairs), f"{what} ({task})")
    return notes


def plan_examples(materials: list[ConceptMaterial], cfg: IngestConfig) -> tuple[list[dict], dict[str, dict]]:
    """All plan rows (epoch-major, then concept by concept; the gate's epoch last) and per-concept
    counts and notes (both of the training epochs)."""
    rows: list[dict] = []
    stats: dict[str, dict] = {}
    by_concept: dict[str, list[list[dict]]] = {}
    for epoch in range(cfg.epochs):
        for material in sorted(materials, key=lambda m: m.concept_key):
            concept_rows, notes = plan_concept_epoch(material, cfg, epoch)
            rows.extend(concept_rows)
            by_concept.setdefault(material.concept_key, []).append(concept_rows)
            if epoch == 0:
                stats[material.concept_key] = {
                    "examples_per_epoch": dict(Counter(r["task"] for r in concept_rows)),
                    "notes": list(material.notes) + notes,
                }
    for material in materials:
        stats[material.concept_key]["notes"] += cap_notes(material, cfg, by_concept[material.concept_key])
    gate = gate_epoch(cfg)
    if gate is not None:
        for material in sorted(materials, key=lambda m: m.concept_key):
            rows.extend(plan_concept_epoch(material.for_gate(), cfg, gate)[0])
    return rows, stats
