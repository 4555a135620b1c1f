"""Text with concept placeholders -> token ids with the bank's virtual ids.

Training templates write `<sks>` for "the sample's own concept"; user prompts write the concept's
name in angle brackets (`<maeve>`). Both become the identifier's virtual id of that concept's slot.
Every sample starts with the concept's system prompt `"<sks> is <und_1>...<und_Nu> <gen_1>...<gen_Ng>."`.
"""
from __future__ import annotations

import re

from ..identity import NAME_PATTERN
from .bank import ConceptBank
from .upload_schema import PLACEHOLDER

_NAME = re.compile(rf"<({NAME_PATTERN})>")  # a concept named in angle brackets, by the one name rule


def encode(tokenizer, text: str, identifiers: dict[str, int]) -> list[int]:
    """Tokenize `text`, replacing `<name>` for every name in `identifiers` by its virtual id.

    The space before a placeholder is dropped so the identifier stands as a word by itself,
    identically in training and at inference.
    """
    ids: list[int] = []
    pos = 0
    for m in _NAME.finditer(text):
        name = m.group(1)
        if name not in identifiers:
            continue
        piece = text[pos : m.start()].rstrip(" ")
        if piece:
            ids.extend(tokenizer.encode(piece, add_special_tokens=False))
        ids.append(identifiers[name])
        pos = m.end()
    tail = text[pos:]
    if tail:
        ids.extend(tokenizer.encode(tail, add_special_tokens=False))
    return ids


def decode(tokenizer, ids: list[int], names_by_id: dict[int, str]) -> str:
    """Inverse of `encode` for generated text: identifier ids print as `<name>`."""
    parts, run = [], []
    for t in ids:
        if t in names_by_id:
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            parts.append(f" <{names_by_id[t]}>")
        else:
            run.append(t)
    if run:
        parts.append(tokenizer.decode(run))
    return "".join(parts).strip()


def system_prompt_ids(tokenizer, bank: ConceptBank, slot: int) -> list[int]:
    """`<sks> is <und...> <gen...>.` for the concept in `slot`."""
    is_ids = tokenizer.encode(" is", add_special_tokens=False)
    dot = tokenizer.encode(".", add_special_tokens=False)
    return [bank.identifier_id(slot)] + is_ids + bank.und_ids(slot) + bank.gen_ids(slot) + dot


def sks(bank: ConceptBank, slot: int) -> dict[str, int]:
    """Placeholder map for training templates of the concept in `slot`."""
    return {PLACEHOLDER[1:-1]: bank.identifier_id(slot)}
