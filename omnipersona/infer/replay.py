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
        persona = self.persona
        prompt = self.intent_prompt(concept, request)
        said = persona.understand(prompt, concepts=[concept], max_new_tokens=self.max_new_tokens).text
        question = self.bind_name(concept, said.strip().split("\n")[0].strip())
        appearance_question = APPEARANCE_QUESTION.replace("<sks>", f"<{concept}>")
        if f"<{concept}>" not in question:
            # The parsed question must be about the concept; fall back to the generic memory query.
            question = appearance_question
        if question == appearance_question and not self.appearance:
            return ReplayTrace(request, prompt, question, "", request)
        answer = persona.understand(question, concepts=[concept], max_new_tokens=self.max_new_tokens).text.strip()
        rewritten = f"{request.rstrip('. ')}. {answer}".strip() if answer else request
        return ReplayTrace(request, prompt, question, answer, rewritten)
