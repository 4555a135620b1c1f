"""The metric arithmetic of the evaluation, free of models: plain numbers in, numbers out.

Names follow OmniPBench (Zhong et al., 2026): recognition is a weighted accuracy (positives and
negatives count half each, and hard and random negatives half of the negative half each); QA and
VQA answers are scored by the F1 of their content words against the expected answer (the paper's
judge gives 0 / 0.5 / 1; a word match that only checked recall let an answer listing everything
score 1, so this one also counts what the answer adds).
What a picture shows is a judge's business (`harness.ImageJudge`), not this module's.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

_STOP = {"a", "an", "the", "some", "is", "it", "its", "of", "with", "this", "that", "and", "in", "on", "at", "to", "wears", "wearing", "has", "have"}
_WORD = re.compile(r"[a-z0-9]+")


def content_words(text: str) -> list[str]:
    """Lowercase words without articles and glue words: 'a black excavator' -> ['black', 'excavator']."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


_NOTHING = {"nothing", "none", "no"}


def _as_nothing(text: str) -> list[str]:
    """Content words of an answer to a question whose answer is 'nothing': 'none', 'nothing' and
    'no <word>' ('no accessory') each become the one word 'nothing'."""
    words = content_words(re.sub(r"\bno\s+[a-z0-9]+", " nothing ", text.lower()))
    return ["nothing" if w in _NOTHING else w for w in words]


def answer_score(predicted: str, expected: str) -> float:
    """Token F1 of an answer: precision and recall of `predicted`'s content words against
    `expected`'s (as multisets), combined as 2PR / (P + R), like SQuAD's F1 on normalised words.

    An exact answer scores 1 ("The toy is a black excavator" for "a black excavator" 0.8: "toy" is
    one word more), one right word of two 0.5, an empty or wrong answer 0, and an answer that lists
    every attribute in the hope of containing the right one scores low (its precision is low): the
    recall-only score before it gave that 1, which `test_answer_score_penalises_an_answer_that_lists_everything`
    shows (it failed with the old function restored). An expected 'nothing' / 'none' also accepts
    'none' / 'nothing' / 'no accessory'. An empty expected answer accepts only an empty one."""
    want, got = content_words(expected), content_words(predicted)
    if want and set(want) <= {"nothing", "none"}:
        want, got = ["nothing"], _as_nothing(predicted)
    if not want:
        return 1.0 if not got else 0.0
    common = sum((Counter(want) & Counter(got)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


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


def bootstrap_interval(values: Iterable[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` and its percentile bootstrap interval.

    Each resample draws len(values) values with replacement (in the benchmarks: concepts, so the
    interval says how much the mean depends on which concepts were drawn); lo / hi are the
    (1 - level) / 2 and (1 + level) / 2 percentiles of the resampled means. NaNs are left out
    (a metric a concept did not report); no values gives NaNs. Seeded: the same call, the same interval."""
    v = np.asarray([x for x in values if not np.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(v.mean()), float(lo), float(hi)
