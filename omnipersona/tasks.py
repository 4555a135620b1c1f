"""Task types of concept training: one entry per task says how its examples become samples, which
loss trains them and how its held-out examples are scored.

    def describe(parts, ex):  # a text-only task that asks its own question
        return [parts.text("Describe <sks>."), parts.text(ex.answer, loss=True)]

    register_task(TaskType("describe", describe, AnswerLoss(), answer_check(with_image=False, prompt="Describe <sks>.")))

The entry is all the library needs (`SampleBuilder`, `objectives.concept_losses`, the evaluate
stage's held-out metrics); the ingest stage plans its examples per task on its own
(`pipelines/ingest/examples.py`) and refuses a task name nobody registered. An unknown task name
raises `UnknownTaskError`, naming the known ones, wherever it is looked up.

Torch-free: ingest's config and data workers validate task names without the model.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .evaluation.metrics import answer_score, mean, weighted_recognition_accuracy

if TYPE_CHECKING:
    import numpy as np

    from .concepts.samples import ConceptExample

# The training templates' name for the sample's own concept (`omnipersona.concepts.prompts.PLACEHOLDER`;
# that module needs torch).
PLACEHOLDER = "<sks>"
_TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class SampleParts(Protocol):
    """The pieces a task's sample is made of (implemented by `omnipersona.concepts.samples`).

    Every sample starts with its concept's system prompt; `TaskType.sample` returns what follows,
    in order. Texts may name the concept as `<sks>`.
    """

    def text(self, text: str, loss: bool = False) -> Any:
        """Tokens of `text`; with `loss`, they are targets of the answer cross-entropy."""

    def vit(self, image: np.ndarray) -> Any:
        """The image through the understanding encoder (ViT)."""

    def clean_latent(self, image: np.ndarray) -> Any:
        """The image's VAE latent as context (no noise, no loss)."""

    def noised_latent(self, image: np.ndarray) -> Any:
        """The image's VAE latent as a flow-matching target (noised, loss)."""


@dataclass(frozen=True)
class AnswerLoss:
    """Cross-entropy on the answer tokens. All such tasks of a concept share one mean (`ce`)."""


@dataclass(frozen=True)
class FlowLoss:
    """Flow-matching MSE on the noised latents: a per-concept mean of the task's own, times `weight`
    (the name of an `omnipersona.objectives.LossWeights` field, or a number)."""

    weight: str | float = 1.0

    def scale(self, weights) -> float:
        if not isinstance(self.weight, str):
            return self.weight
        if not hasattr(weights, self.weight):
            raise ValueError(f"FlowLoss weight {self.weight!r} is not a field of {type(weights).__name__}")
        return getattr(weights, self.weight)


@dataclass(frozen=True)
class HeldOutCheck:
    """How a task's held-out examples are scored (`pipelines/evaluate/heldout.py` runs it).

    `score(persona, concept_name, example)` gives one score per example, for at most
    `floor(share * max_examples)` examples of the task; `summarise(task_name, scores)` turns them into
    metrics (NaN values are dropped).
    """

    score: Callable[[Any, str, ConceptExample], Any]
    summarise: Callable[[str, list], dict[str, float]]
    share: float = 1.0


@dataclass(frozen=True)
class TaskType:
    name: str
    sample: Callable[[SampleParts, ConceptExample], list]  # the sample's items after the system prompt
    loss: AnswerLoss | FlowLoss
    heldout: HeldOutCheck | None = None  # None: the task adds no held-out metric


class UnknownTaskError(ValueError):
    pass


_TASKS: dict[str, TaskType] = {}


def register_task(task: TaskType) -> TaskType:
    """Add a task type; its name must be new (lowercase letters, digits, '_')."""
    if not _TASK_NAME.fullmatch(task.name):
        raise ValueError(f"task name {task.name!r}: use lowercase letters, digits and '_', starting with a letter")
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    if not isinstance(task.loss, (AnswerLoss, FlowLoss)):
        raise ValueError(f"task {task.name!r}: loss must be AnswerLoss() or FlowLoss(...), not {task.loss!r}")
    _TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    task_type(name)
    del _TASKS[name]


def task_names() -> tuple[str, ...]:
    """Registered task names, in registration order."""
    return tuple(_TASKS)


def task_type(name: str) -> TaskType:
    try:
        return _TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}") from None


def check_task_names(names: Iterable[str]) -> tuple[str, ...]:
    """`names` as a tuple when every one is registered, else `UnknownTaskError`."""
    names = tuple(names)
    for name in names:
        task_type(name)
    return names


def flow_tasks() -> list[TaskType]:
    """Task types trained by flow matching, in registration order (the order their loss terms add up)."""
    return [t for t in _TASKS.values() if isinstance(t.loss, FlowLoss)]


# ----------------------------------------------------------------------------- the built-in tasks
def image_question_answer(parts: SampleParts, ex: ConceptExample) -> list:
    """[ViT image] question -> answer."""
    return [parts.vit(ex.image), parts.text(ex.prompt), parts.text(ex.answer or "", loss=True)]


def question_answer(parts: SampleParts, ex: ConceptExample) -> list:
    """question -> answer."""
    return [parts.text(ex.prompt), parts.text(ex.answer or "", loss=True)]


def text_to_image(parts: SampleParts, ex: ConceptExample) -> list:
    """prompt -> [noised latent of the target]."""
    return [parts.text(ex.prompt), parts.noised_latent(ex.target)]


def edit_image(parts: SampleParts, ex: ConceptExample) -> list:
    """[clean latent + ViT image of the source] instruction -> [noised latent of the target]."""
    return [parts.clean_latent(ex.image), parts.vit(ex.image), parts.text(ex.prompt), parts.noised_latent(ex.target)]


def _named(text: str, name: str) -> str:
    return text.replace(PLACEHOLDER, f"<{name}>")


def _recognition_score(persona, name: str, ex: ConceptExample) -> tuple[bool, float]:
    p = persona.understand(_named(ex.prompt, name), image=ex.image, max_new_tokens=1).yes_probability
    return (ex.answer or "").lower().startswith("yes"), p


def _recognition_metrics(task: str, scores: list[tuple[bool, float]]) -> dict[str, float]:
    positives = [p for is_positive, p in scores if is_positive]
    negatives = [p for is_positive, p in scores if not is_positive]
    return weighted_recognition_accuracy(positives, random_negatives=negatives)


def answer_check(with_image: bool, share: float = 0.5, prompt: str | None = None) -> HeldOutCheck:
    """Judge the model's answer against the example's (token F1 of content words, `answer_score`): `<task>_accuracy`.

    The question is the example's prompt, or `prompt` for a task that asks its own."""

    def score(persona, name: str, ex: ConceptExample) -> float:
        question = _named(ex.prompt if prompt is None else prompt, name)
        said = persona.understand(question, image=ex.image if with_image else None, max_new_tokens=16).text
        # Answers name the concept as a plain word (the model writes its name, not its token).
        return answer_score(said, (ex.answer or "").replace(PLACEHOLDER, name))

    return HeldOutCheck(score, lambda task, scores: {f"{task}_accuracy": mean(scores)}, share)


RECOGNITION_CHECK = HeldOutCheck(_recognition_score, _recognition_metrics, share=1.0)

for _task in (
    TaskType("recognition", image_question_answer, AnswerLoss(), RECOGNITION_CHECK),
    TaskType("vqa", image_question_answer, AnswerLoss(), answer_check(with_image=True)),
    TaskType("text_qa", question_answer, AnswerLoss(), answer_check(with_image=False)),
    TaskType("t2i", text_to_image, FlowLoss("lambda_img")),
    TaskType("edit", edit_image, FlowLoss("lambda_edit")),
):
    register_task(_task)
