"""Explicit knowledge replay (inference-time) for generation and editing.

1. Intent parsing: a few-shot prompt turns the request ("Generate a toy for <maeve>") into an
   explicit question ("What is the toy of <maeve>?"). The concept is named there as a plain word
   ("maeve"): rewriting a request is a language skill of the base, and a base cannot be relied on
   to *emit* a concept's new identifier token (measured on the world base: before training it
   never did, so every request fell back to the appearance question). The plain name in the parsed
   question is then bound back to the concept.
2. Memory retrieval: the model answers that question from the concept tokens.
3. Prompt rewriting: the answer is merged into the request.
Every intermediate text is kept in a `ReplayTrace` for inspection.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Six in-context examples (the paper's default count); `<sks>` stands for the concept.
FEW_SHOT = (
    ("Generate a toy for <sks>.", "What is the toy of <sks>?"),
    ("Draw <sks> eating its favourite food.", "What is the favourite food of <sks>?"),
    ("Show <sks> in front of its home.", "What is the home of <sks>?"),
    ("Put <sks> next to its best friend.", "Who is the best friend of <sks>?"),
    ("Make <sks> wear its usual hat.", "What hat does <sks> usually wear?"),
    ("A photo of <sks> on the beach.", "What does <sks> look like?"),
)


@dataclass
class ReplayTrace:
    request: str
    intent_prompt: str
    question: str
    answer: str
    rewritten: str


APPEARANCE_QUESTION = FEW_SHOT[-1][1]  # "What does <sks> look like?"


class KnowledgeReplay:
    """`appearance=False` leaves a request whose question is the appearance one as it is: the
    generation tokens already carry how the concept looks, and a recalled description only adds
    text the base may redraw from (measured on the world base: docs/evaluation.md)."""

    def __init__(self, persona, num_examples: int = 6, max_new_tokens: int = 24, appearance: bool = True):
        if not 0 <= num_examples <= len(FEW_SHOT):
            raise ValueError(f"num_examples must be within 0..{len(FEW_SHOT)}")
        self.persona, self.num_examples, self.max_new_tokens = persona, num_examples, max_new_tokens
        self.appearance = appearance

    def intent_prompt(self, name: str, request: str) -> str:
        """The few-shot prompt, the concept written as the plain word `name`."""
        shots = "".join(f"Request: {r}\nQuestion: {q}\n" for r, q in FEW_SHOT[: self.num_examples])
        return (shots + f"Request: {request}\nQuestion:").replace("<sks>", name).replace(f"<{name}>", name)

    @staticmethod
    def bind_name(name: str, text: str) -> str:
        """Plain mentions of `name` in `text` -> `<name>` (mentions already in brackets stay)."""
        return re.sub(rf"(?<![<\w]){re.escape(name)}(?![>\w])", f"<{name}>", text)

    def run(self, concept: str, request: str) -> ReplayTrace:
        return self._run([(concept, request)], self._ask_one_by_one)[0]

    def run_batch(self, requests: list[tuple[str, str]]) -> list[ReplayTrace]:
        """`run` for many (concept, request) pairs: each of the two questions is asked of all of them
        in one `Persona.understand_batch`; every trace equals what `run` gives for its pair."""
        return self._run(list(requests), self._ask_together)

    def _ask_one_by_one(self, questions: list[tuple[str, str]]) -> list[str]:
        return [self.persona.understand(q, concepts=[c], max_new_tokens=self.max_new_tokens).text for q, c in questions]

    def _ask_together(self, questions: list[tuple[str, str]]) -> list[str]:
        from .requests import Understand

        asked = [Understand(q, concepts=[c], max_new_tokens=self.max_new_tokens) for q, c in questions]
        return [a.text for a in self.persona.understand_batch(asked)]

    def _run(self, requests: list[tuple[str, str]], ask) -> list[ReplayTrace]:
        prompts = [self.intent_prompt(concept, request) for concept, request in requests]
        said = ask([(prompt, concept) for prompt, (concept, _) in zip(prompts, requests)])
        questions = []
        for (concept, _), text in zip(requests, said):
            question = self.bind_name(concept, text.strip().split("\n")[0].strip())
            if f"<{concept}>" not in question:
                # The parsed question must be about the concept; fall back to the generic memory query.
                question = self._appearance(concept)
            questions.append(question)
        recall = [i for i, (concept, _) in enumerate(requests) if self.appearance or questions[i] != self._appearance(concept)]
        answers = dict(zip(recall, ask([(questions[i], requests[i][0]) for i in recall]) if recall else []))
        traces = []
        for i, (concept, request) in enumerate(requests):
            answer = answers[i].strip() if i in answers else ""
            rewritten = f"{request.rstrip('. ')}. {answer}".strip() if answer else request
            traces.append(ReplayTrace(request, prompts[i], questions[i], answer, rewritten))
        return traces

    @staticmethod
    def _appearance(concept: str) -> str:
        return APPEARANCE_QUESTION.replace("<sks>", f"<{concept}>")
