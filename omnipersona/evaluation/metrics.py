"""The metric arithmetic of the evaluation, free of models: plain numbers in, numbers out.

Names follow OmniPBench (Zhong et al., 2026): recognition is a weighted accuracy (positives and
negatives count half each, and hard and random negatives half of the negative half each); QA and
VQA are judged 0 / 0.5 / 1 like the paper's judge, here by matching the answer's content words.
What a picture shows is a judge's business (`harness.ImageJudge`), not this module's.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

_STOP = {"a", "an", "the", "some", "is", "it", "its", "of", "with", "this", "that", "and", "in", "on", "at", "to", "wears", "wearing", "has", "have"}
_WORD = re.compile(r"[a-z0-9]+")


def content_words(text: str) -> list[str]:
    """Lowercase words without articles and glue words: 'a black excavator' -> ['black', 'excavator']."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def answer_score(predicted: str, expected: str) -> float:
    """Judge score of an answer: 1 when every content word of `expected` is in `predicted`,
    0.5 when at least half of them are, else 0. An expected 'nothing' / 'none' also accepts 'none' /
    'nothing' / 'no accessory'."""
    want = content_words(expected)
    got = set(content_words(predicted))
    if set(want) <= {"nothing", "none"}:
        return 1.0 if got & {"nothing", "none", "no"} else 0.0
    if not want:
        return 1.0 if not got else 0.0
    hit = sum(w in got for w in want) / len(want)
    return 1.0 if hit == 1.0 else 0.5 if hit >= 0.5 else 0.0


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def decision_accuracy(yes_probabilities: Sequence[float], expected_yes: bool, threshold: float = 0.5) -> float:
    """Share of yes/no decisions (yes when p(yes) > threshold) that are right."""
    if not len(yes_probabilities):
        return float("nan")
    said_yes = np.asarray(yes_probabilities, dtype=np.float64) > threshold
    return float(np.mean(said_yes == expected_yes))


def weighted_recognition_accuracy(
    positives: Sequence[float],
    hard_negatives: Sequence[float] = (),
    random_negatives: Sequence[float] = (),
    threshold: float = 0.5,
) -> dict[str, float]:
    """Recognition from yes-probabilities: positives weigh 1/2, negatives 1/2 (split evenly between
    the hard and random groups that are present). A model that always says "Yes" scores 0.5."""
    pos = decision_accuracy(positives, True, threshold)
    groups = [decision_accuracy(g, False, threshold) for g in (hard_negatives, random_negatives) if len(g)]
    neg = mean(groups)
    out = {
        "recognition_accuracy": 0.5 * pos + 0.5 * neg if groups else pos,
        "recognition_positive": pos,
    }
    if len(hard_negatives):
        out["recognition_hard_negative"] = decision_accuracy(hard_negatives, False, threshold)
    if len(random_negatives):
        out["recognition_random_negative"] = decision_accuracy(random_negatives, False, threshold)
    return out


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def mean_pairwise_cosine(generated: np.ndarray, references: np.ndarray) -> float:
    """CLIP-I / DINO style: mean cosine of every generated image's features to every reference's."""
    if len(generated) == 0 or len(references) == 0:
        return float("nan")
    return float(cosine_similarity_matrix(generated, references).mean())
