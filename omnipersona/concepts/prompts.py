"""Text with concept placeholders -> token ids with the bank's virtual ids.

Training templates write `<sks>` for "the sample's own concept"; user prompts write the concept's
name in angle brackets (`<maeve>`, `<Mr. Whiskers>`). Both become the identifier's virtual id of
that concept's slot. Every sample starts with the concept's system prompt
`"<sks> is <und_1>...<und_Nu> <gen_1>...<gen_Ng>."`.

Text is data, never control: everything between placeholders is tokenised by
`omnipersona.model.tokenizer.encode_user_text`, so `<|im_start|>` or `<|endoftext|>` written in a
fact, a question or a display name are ordinary tokens; the only control ids of a sample are the
template's, added by the packer (`omnipersona.model.packing`) and the sampler.
"""
from __future__ import annotations

import re
from functools import lru_cache

from ..model.tokenizer import encode_user_text
from .bank import ConceptBank
from .upload_schema import PLACEHOLDER


@lru_cache(maxsize=256)
def _placeholders(names: tuple[str, ...]) -> re.Pattern:
    """`<name>` for exactly the given names, longest first (a name that itself holds '>' is not cut short)."""
    ordered = sorted((n for n in names if n), key=lambda n: (-len(n), n))
    return re.compile("<(" + "|".join(re.escape(n) for n in ordered) + ")>")


def encode(tokenizer, text: str, identifiers: dict[str, int]) -> list[int]:
    """Tokenize `text`, replacing `<name>` for every name in `identifiers` by its virtual id.

    A name is matched literally, whatever characters it holds (a display name such as `Mr. Whiskers`
    or even `<|im_start|>` binds to its identifier); the rest is user text (`encode_user_text`).
    The space before a placeholder is dropped so the identifier stands as a word by itself,
    identically in training and at inference.
    """
    ids: list[int] = []
    pos = 0
    names = tuple(n for n in identifiers if n)
    for m in _placeholders(names).finditer(text) if names else ():
        piece = text[pos : m.start()].rstrip(" ")
        if piece:
            ids.extend(encode_user_text(tokenizer, piece))
        ids.append(identifiers[m.group(1)])
        pos = m.end()
    tail = text[pos:]
    if tail:
        ids.extend(encode_user_text(tokenizer, tail))
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
    is_ids = encode_user_text(tokenizer, " is")
    dot = encode_user_text(tokenizer, ".")
    return [bank.identifier_id(slot)] + is_ids + bank.und_ids(slot) + bank.gen_ids(slot) + dot


def sks(bank: ConceptBank, slot: int) -> dict[str, int]:
    """Placeholder map for training templates of the concept in `slot`."""
    return {PLACEHOLDER[1:-1]: bank.identifier_id(slot)}
