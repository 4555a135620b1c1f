"""What one request of a batch asks a `Persona` (torch-free, so callers that only build batches,
such as the evaluation harness, need not import the model).

    persona.run_batch([Understand("Is <maeve> in this image?", image=photo),
                       Generate("rex", "Generate a toy for <rex>", seed=3),
                       Edit("kiki", photo, "remove <kiki>")])

Each field means what the single-request method's parameter of the same name means
(`Persona.understand`, `generate`, `edit`); `seed` picks the request's starting noise (None: the
persona's `sampling.seed`), so a request draws the same picture alone or in any batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass
class Understand:
    question: str
    image: Any = None  # PIL image, HxWx3 uint8 array, or None
    concepts: list[str] | None = None
    max_new_tokens: int = 32


@dataclass
class Generate:
    concept: str
    prompt: str
    replay: bool = True
    size: int | None = None
    seed: int | None = None


@dataclass
class Edit:
    concept: str
    image: Any
    instruction: str
    replay: bool = True
    seed: int | None = None


Request = Union[Understand, Generate, Edit]
