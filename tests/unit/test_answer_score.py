"""`answer_score` counts what an answer adds as well as what it finds (token F1 over content words)."""
import pytest

from omnipersona.evaluation.metrics import answer_score

EXPECTED = "a black excavator"
# Every attribute of a world concept, in one answer: it contains the right one, and everything else.
LISTS_EVERYTHING = ("a round teal striped thing with a red hat, a black excavator, a red kite, a blue ball, "
                    "pizza, sushi, a cave, a castle, painting and chess")


def test_an_exact_answer_scores_one_and_an_empty_one_zero():
    assert answer_score("a black excavator", EXPECTED) == 1.0
    assert answer_score("A Black Excavator.", EXPECTED) == 1.0  # case, articles and punctuation are not words
    assert answer_score("", EXPECTED) == 0.0
    assert answer_score("the", EXPECTED) == 0.0  # no content word at all


def test_answer_score_penalises_an_answer_that_lists_everything():
    """Break-checked: with the recall-only `answer_score` restored (1 when every expected content
    word is in the answer) this test failed, the listing scored 1.0."""
    listing = answer_score(LISTS_EVERYTHING, EXPECTED)
    assert listing < 0.3, listing
    # 2 of its 18 content words are expected (precision 1/9), both expected words are there (recall 1).
    assert listing == pytest.approx(2 * (1 / 9) / (1 + 1 / 9))


def test_precision_and_recall_both_count():
    assert answer_score("black", EXPECTED) == pytest.approx(2 / 3)  # right but half of it: P 1, R 1/2
    assert answer_score("a black excavator and a red kite", EXPECTED) == pytest.approx(2 / 3)  # P 1/2, R 1
    assert answer_score("black black black excavator", EXPECTED) == pytest.approx(2 / 3)  # repeats count
    assert answer_score("a red excavator", EXPECTED) == 0.5


def test_nothing_answers():
    for said in ("nothing", "None.", "no accessory", "It wears nothing"):
        assert answer_score(said, "nothing") == 1.0, said
    assert answer_score("a red hat", "nothing") == 0.0
    assert answer_score("nothing, a red hat", "nothing") == 0.5  # P 1/3, R 1
    assert answer_score("no hat", "a red hat") == 0.5  # "no" is an ordinary word there: P 1/2, R 1/2
