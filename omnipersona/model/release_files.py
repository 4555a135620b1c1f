"""The file names of BAGEL's public checkpoint layout.

Torch-free on purpose: a job's preflight checks a base-model folder (local or on S3) by listing
it, seconds before anything loads it.
"""
from __future__ import annotations

from collections.abc import Iterable

LLM_CONFIG, VIT_CONFIG, BAGEL_CONFIG = "llm_config.json", "vit_config.json", "bagel_config.json"
EMA, AE = "ema.safetensors", "ae.safetensors"
REQUIRED_FILES = (LLM_CONFIG, VIT_CONFIG, EMA, AE)
# Not part of a release: the job records the weights' fingerprint next to them (once per base, so
# the driver never loads the weights to know it); readers of a release folder ignore it.
FINGERPRINT_FILE = "omnipersona_fingerprint.json"
# Any one of these makes the tokenizer loadable (prompts need it; the weights alone do not).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def missing_release_files(names: Iterable[str], need_tokenizer: bool = True) -> list[str]:
    """What a folder holding the files `names` lacks to be a BAGEL checkpoint (empty: nothing)."""
    names = set(names)
    missing = [f for f in REQUIRED_FILES if f not in names]
    if need_tokenizer and not names & set(TOKENIZER_FILES):
        missing.append("tokenizer files (" + " or ".join(TOKENIZER_FILES) + ")")
    return missing
