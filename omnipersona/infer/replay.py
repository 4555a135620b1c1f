"""Explicit knowledge replay (inference-time) for generation and editing.

1. Intent parsing: a few-shot prompt turns the request ("Generate a toy for <maeve>") into an
   explicit question ("What is the toy of <maeve>?").
2. Memory retrieval: the model answers that question from the concept tokens.
3. Prompt rewriting: the answer is merged into the request.
Every intermediate text is kept in a `ReplayTrace` for inspection.
"""
from __future__ import annotations

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


class KnowledgeReplay:
    def __init__(self, persona, num_examples: int = 6, max_new_tokens: int = 24):
        if not 0 <= num_examples <= len(FEW_SHOT):
            raise ValueError(f"num_examples must be within 0..{len(FEW_SHOT)}")
        self.persona, self.num_examples, self.max_new_tokens = persona, num_examples, max_new_tokens

    def intent_prompt(self, name: str, request: str) -> str:
        shots = "".join(f"Request: {r}\nQuestion: {q}\n" for r, q in FEW_SHOT[: self.num_examples])
        return (shots + f"Request: {request}\nQuestion:").replace("<sks>", f"<{name}>")

    def run(self, concept: str, request: str) -> ReplayTrace:
        persona = self.persona
        prompt = self.intent_prompt(concept, request)
        question = persona.understand(prompt, concepts=[concept], max_new_tokens=self.max_new_tokens).text.strip()
        if f"<{concept}>" not in question:
            # The parsed question must be about the concept; fall back to the generic memory query.
            question = f"What does <{concept}> look like?"
        answer = persona.understand(question, concepts=[concept], max_new_tokens=self.max_new_tokens).text.strip()
        rewritten = f"{request.rstrip('. ')}. {answer}".strip() if answer else request
        return ReplayTrace(request, prompt, question, answer, rewritten)
