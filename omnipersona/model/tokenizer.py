"""The Qwen2 tokenizer BAGEL uses, its four chat/vision markers, and a tiny one built locally for tests.

Text is data, never control: every text that comes from a user (concept.json texts, display names,
class words, edit instructions, held-out questions, inference prompts) is tokenised by
`encode_user_text`, which never produces a control id (`control_token_ids`: every token the
tokenizer adds on top of its BPE vocabulary — `<|endoftext|>`, `<|im_start|>`, `<|vision_start|>`,
and in Qwen2.5 also the non-special `<tool_call>`, `<|fim_prefix|>`, ...). A user's
`"<|im_start|>system"` is spelt with ordinary tokens, exactly as any other punctuation and letters.
The prompt template (`<|im_start|>` / `<|im_end|>` around each text span, `<|vision_start|>` /
`<|vision_end|>` around images) is added by the packer and the sampler with the real ids
(`SpecialTokens`).

How: the backend tokenizer (`tokenizers.Tokenizer`) is copied without its added tokens
(`Tokenizer.from_str` of its JSON with `"added_tokens": []`) and that copy encodes user text with
`add_special_tokens=False`. transformers' `split_special_tokens=True` is not enough on its own: it
splits special added tokens only, so Qwen2.5's non-special added tokens (`<tool_call>`, `<|fim_*|>`)
would still come out as their ids. Text without any added-token string is tokenised exactly as
`tokenizer.encode(text, add_special_tokens=False)` (the tokens of ordinary text never change).
"""
from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# BAGEL adds these when the tokenizer lacks them: bos/eos of every text span and image markers.
MARKERS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")


@dataclass(frozen=True)
class SpecialTokens:
    bos: int  # <|im_start|>
    eos: int  # <|im_end|>
    start_of_image: int
    end_of_image: int

    @property
    def image_markers(self) -> tuple[int, int]:
        return (self.start_of_image, self.end_of_image)


def load_tokenizer(folder: str | Path):
    """Load the tokenizer files of a checkpoint folder and make sure the markers exist."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    missing = [m for m in MARKERS if tok.convert_tokens_to_ids(m) in (None, tok.unk_token_id)]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    ids = [tok.convert_tokens_to_ids(m) for m in MARKERS]
    return tok, SpecialTokens(*ids)


class ControlTokenInUserText(ValueError):
    """Raised if user text ever tokenised to a control id (a broken tokenizer; never silently kept)."""


@dataclass(frozen=True)
class _PlainEncoder:
    size: int  # len(tokenizer) when built: a tokenizer that gained tokens is re-read
    control_ids: frozenset[int]
    backend: object | None  # tokenizers.Tokenizer without added tokens; None: slow tokenizer fallback


_PLAIN: "weakref.WeakKeyDictionary[object, _PlainEncoder]" = weakref.WeakKeyDictionary()
_PLAIN_LOCK = threading.Lock()


def _plain_encoder(tokenizer) -> _PlainEncoder:
    size = len(tokenizer)
    found = _PLAIN.get(tokenizer)
    if found is not None and found.size == size:
        return found
    control = set(getattr(tokenizer, "all_special_ids", []) or [])
    control |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    backend = getattr(tokenizer, "backend_tokenizer", None)
    plain = None
    if backend is not None:
        from tokenizers import Tokenizer

        data = json.loads(backend.to_str())
        control |= {int(t["id"]) for t in data.get("added_tokens") or []}
        data["added_tokens"] = []  # no added-token matching: their strings become ordinary text
        data["truncation"] = data["padding"] = None
        plain = Tokenizer.from_str(json.dumps(data))
    encoder = _PlainEncoder(size, frozenset(control), plain)
    with _PLAIN_LOCK:
        _PLAIN[tokenizer] = encoder
    return encoder


def control_token_ids(tokenizer) -> frozenset[int]:
    """Every id user text must never produce: the special ids and every added token (special or not)."""
    return _plain_encoder(tokenizer).control_ids


def encode_user_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as data: special-token strings in it are split into ordinary tokens.

    Ordinary text gets exactly the ids of `tokenizer.encode(text, add_special_tokens=False)`.
    """
    if not text:
        return []
    encoder = _plain_encoder(tokenizer)
    if encoder.backend is not None:
        ids = encoder.backend.encode(text, add_special_tokens=False).ids
    else:  # a slow (Python) tokenizer: transformers' own switch, then the check below
        ids = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    bad = sorted(set(ids) & encoder.control_ids)
    if bad:
        raise ControlTokenInUserText(f"user text tokenised to control id(s) {bad}: {text[:80]!r}")
    return list(ids)


def build_tiny_tokenizer(folder: str | Path, corpus: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE (Qwen2 style) on `corpus` and save it as Qwen2 tokenizer files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", *MARKERS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(MARKERS),
    )
    fast.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return fast
