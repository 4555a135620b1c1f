"""The before/after contact sheet (omnipersona/infer/contact_sheet.py), with a stand-in persona: what
each row asks, what each cell says, and the picture's layout. The demo's sheets from real models are
checked in tests/integration/test_demo_log.py."""
from __future__ import annotations

from PIL import Image

from omnipersona.evaluation.eval_set import QA, ConceptEvalSet, EditCase, PargCase
from omnipersona.infer.contact_sheet import (
    BAD,
    CELL_H,
    CELL_W,
    COLUMNS,
    GOOD,
    IMAGE,
    LABEL_W,
    PAD,
    SHOWN,
    TITLE_H,
    SheetProbe,
    SheetRow,
    compose_sheet,
    run_row,
    sheet_size,
)
from omnipersona.infer.engine import Answer, Generated
from omnipersona.infer.replay import ReplayTrace


def _image(colour) -> Image.Image:
    return Image.new("RGB", (32, 32), colour)


def _eval_set() -> ConceptEvalSet:
    return ConceptEvalSet(
        name="kai", class_word="star", attributes={},
        views=[_image((0, 0, 200 + i)) for i in range(3)], hard_negatives=[_image((200, 200, i)) for i in range(3)],
        text_qa=[QA("What colour is <kai>?", "teal", "colour", group="visible"),
                 QA("What does <kai> eat?", "carrots", "favourite_food", group="private"),
                 QA("Which toy does <kai> play with?", "a brown ball", "toy", group="private")],
        parg=[PargCase("toy", "a photo of <kai> with its toy", "a brown ball", "ball")],
        edits=[EditCase("remove", "remove <kai>", _image((1, 1, 1)), {}),
               EditCase("background", "change the background to snow", _image((2, 2, 2)), {})],
    )


class StandIn:
    """Says yes to blue pictures (p 0.9) and no to the rest (p 0.2); records what it was asked."""

    def __init__(self):
        self.asked = []

    def recognition_yes_probability_batch(self, requests):
        return [0.9 if im.getpixel((0, 0))[2] >= 200 and im.getpixel((0, 0))[0] == 0 else 0.2 for _, im in requests]

    def understand(self, question, image=None, max_new_tokens=32):
        self.asked.append(question)
        return Answer("Yes" if image is not None else "a brown ball")

    def generate(self, concept, prompt, seed=None):
        trace = ReplayTrace(prompt, "", "What is <kai>'s toy?", "a brown ball", f"{prompt}. a brown ball")
        return Generated(_image((0, 255, 0)), trace.rewritten, trace)

    def edit(self, concept, image, instruction, replay=True, seed=None):
        return Generated(_image((255, 255, 255)), instruction)


def test_a_row_asks_recognition_a_private_fact_a_replayed_generation_and_an_edit():
    """Break-checked once by hand (2026-11-30): scoring only the shown held-out pictures fails the
    p(yes) list assertion."""
    probe = SheetProbe.from_eval_set(_eval_set())
    assert probe.fact.attribute == "toy" and probe.edit.kind == "background"  # the toy first, a background edit first
    persona = StandIn()
    row = run_row("AFTER", persona, probe)
    assert row.held_out_p_yes == [0.9] * 3 and row.look_alike_p_yes == [0.2] * 3  # every held-out picture, not just the shown
    assert row.held_out_mean == 0.9 and abs(row.look_alike_mean - 0.2) < 1e-9
    assert len(row.cells) == COLUMNS == 2 * SHOWN + 3
    recognition = row.cells[: 2 * SHOWN]
    assert [c.correct for c in recognition] == [True] * 4  # yes to held-out views, p < 0.5 for look-alikes
    assert all("Is <kai> in this image?" in c.lines[0] for c in recognition)
    assert [line for line in recognition[0].lines if "p(yes)" in line] == ["p(yes) = 0.90"]
    fact, made, edit = row.cells[2 * SHOWN:]
    assert fact.image is None and "Q: Which toy does <kai> play with?" in fact.lines and "A: a brown ball" in fact.lines
    assert "replay Q: What is <kai>'s toy?" in made.lines and "drawn from: a photo of <kai> with its toy. a brown ball" in made.lines
    assert edit.lines[0] == "edit: change the background to snow" and edit.image.size == (IMAGE, IMAGE)


def test_the_sheet_has_the_layout_it_announces():
    """Break-checked once by hand (2026-11-30): with the recognition frames not drawn, the frame pixel
    assertions fail; with the uploads strip left out, the upload pixel assertion fails."""
    probe = SheetProbe.from_eval_set(_eval_set())
    before, after = StandIn(), StandIn()
    before.recognition_yes_probability_batch = lambda requests: [0.4] * len(requests)  # wrong on held-out views
    rows = [run_row("BEFORE", before, probe), run_row("AFTER", after, probe)]
    uploads = [_image((250, 0, 0))] * 9
    sheet = compose_sheet("acme/kai \x05 <kai>", uploads, rows)  # a control byte in the text must not break drawing
    assert sheet.size == sheet_size() == sheet_size(3, COLUMNS) == (LABEL_W + COLUMNS * CELL_W, TITLE_H + 3 * CELL_H)
    left = LABEL_W + (CELL_W - IMAGE) // 2

    def frame(row: int, column: int):
        return sheet.getpixel((left + column * CELL_W - 2, TITLE_H + row * CELL_H + PAD + IMAGE // 2))

    assert sheet.getpixel((left + IMAGE // 2, TITLE_H + PAD + IMAGE // 2)) == (250, 0, 0)  # an upload, scaled up
    assert frame(1, 0) == BAD and frame(1, 2) == GOOD  # BEFORE: 0.4 on a held-out view is wrong, on a look-alike right
    assert frame(2, 0) == GOOD and frame(2, 2) == GOOD
    assert sheet.getpixel((left + 6 * CELL_W + IMAGE // 4, TITLE_H + 2 * CELL_H + PAD + IMAGE // 2)) == (2, 2, 2)  # edit source


def test_the_demo_summary_counts_a_win_only_above_rounding():
    """jobs/demo_sheets.py's printed summary. Break-checked once by hand (2026-11-30): with
    BEATS_BY = 0 the 0.370 -> 0.372 concept counts as a win and the last assertion fails."""
    from pathlib import Path

    from jobs.demo_sheets import ConceptSheet, summary_lines

    before = SheetRow("BEFORE", [], [0.37, 0.37], [0.36])
    same, better = SheetRow("AFTER", [], [0.372, 0.372], [0.37]), SheetRow("AFTER", [], [0.5, 0.7], [0.3])
    lines = summary_lines([ConceptSheet("acme/kai", Path("kai.png"), before, same), ConceptSheet("acme/sol", Path("sol.png"), before, better)])
    assert lines[1].startswith("acme/sol: held-out p(yes) 0.37 -> 0.60, look-alikes 0.36 -> 0.30 (untrained -> trained)")
    assert lines[-1].startswith("trained beats untrained on held-out recognition for 1 of 2 concepts")
