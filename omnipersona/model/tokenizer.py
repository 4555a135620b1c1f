"""The Qwen2 tokenizer BAGEL uses, its four chat/vision markers, and a tiny one built locally for tests."""
from __future__ import annotations

import json
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
