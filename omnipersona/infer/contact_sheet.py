"""A concept's before/after contact sheet: what its tokens do untrained and trained, in one picture.

    probe = SheetProbe.from_eval_set(eval_set)                  # what both rows are asked
    before = run_row("BEFORE", untrained_persona, probe)        # answers, p(yes), pictures
    after = run_row("AFTER", trained_persona, probe)
    compose_sheet("acme/kai", uploads, [before, after]).save("kai.png")

Rows: the concept's uploads (a strip of up to `COLUMNS` pictures), then one row per persona with
`COLUMNS` cells: recognition ("Is <name> in this image?") on `SHOWN` held-out pictures and `SHOWN`
look-alikes (answer + p(yes), a green frame when p(yes) is on the right side of 0.5, red when not),
a question about a private fact (question, answer, the expected answer), a picture generated through
knowledge replay from a request about a private item (with the replay trace), and an edit of a
held-out picture. Every row is scored on all of the probe's held-out pictures and look-alikes; the
cells show the first `SHOWN`. Pictures are scaled up (nearest neighbour) to `IMAGE` pixels.

Library code: torch (through `Persona`) and PIL only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..evaluation.eval_set import QA, ConceptEvalSet, EditCase, PargCase

SHOWN = 2  # held-out pictures and look-alikes drawn per row
COLUMNS = 2 * SHOWN + 3  # recognition cells, private fact, replay generation, edit
IMAGE = 96  # side of a drawn picture
TEXT = 112  # text under a picture
PAD = 6
CELL_W = 168
CELL_H = PAD + IMAGE + PAD + TEXT
LABEL_W = 88
TITLE_H = 26
ROWS = 3  # uploads, before, after

GOOD, BAD, INK, PAPER, GREY = (30, 150, 60), (200, 40, 40), (20, 20, 20), (255, 255, 255), (236, 236, 236)


def sheet_size(rows: int = ROWS, columns: int = COLUMNS) -> tuple[int, int]:
    """(width, height) of a sheet with `rows` rows (the uploads strip counts as one) of `columns` cells."""
    return LABEL_W + columns * CELL_W, TITLE_H + rows * CELL_H


@dataclass
class SheetProbe:
    """What every row of a sheet is asked (the concept named `<name>`)."""

    name: str
    held_out: list[Image.Image]
    look_alikes: list[Image.Image]
    fact: QA  # a private fact: never drawn in the uploads
    parg: PargCase  # a request about a private item, for generation through knowledge replay
    edit: EditCase

    @classmethod
    def from_eval_set(cls, eval_set: ConceptEvalSet) -> "SheetProbe":
        """The set's held-out views and hard negatives, its first private question (a toy's first), its
        first PARG request and its first background edit (else its first edit)."""
        private = [q for q in eval_set.text_qa if q.group == "private"] or list(eval_set.text_qa)
        private.sort(key=lambda q: q.attribute != "toy")
        edits = sorted(eval_set.edits, key=lambda e: e.kind != "background")
        if not (eval_set.views and eval_set.hard_negatives and private and eval_set.parg and edits):
            raise ValueError(f"the eval set of {eval_set.name!r} needs views, hard negatives, a private fact, a PARG "
                             "request and an edit for a contact sheet")
        return cls(eval_set.name, list(eval_set.views), list(eval_set.hard_negatives), private[0], eval_set.parg[0], edits[0])


@dataclass
class Cell:
    image: Image.Image | None
    lines: list[str]
    correct: bool | None = None  # frame colour: green, red, or none


@dataclass
class SheetRow:
    label: str
    cells: list[Cell]
    held_out_p_yes: list[float] = field(default_factory=list)  # every held-out picture's, not just the shown ones
    look_alike_p_yes: list[float] = field(default_factory=list)

    @property
    def held_out_mean(self) -> float:
        return float(np.mean(self.held_out_p_yes))

    @property
    def look_alike_mean(self) -> float:
        return float(np.mean(self.look_alike_p_yes))


def run_row(label: str, persona, probe: SheetProbe, seed: int = 0) -> SheetRow:
    """Ask `persona` (a `Persona` that has `probe.name` loaded) everything a row shows."""
    name = probe.name
    p_yes = persona.recognition_yes_probability_batch([(name, im) for im in probe.held_out + probe.look_alikes])
    held, alike = p_yes[: len(probe.held_out)], p_yes[len(probe.held_out):]
    question = f"Is <{name}> in this image?"
    cells = []
    for kind, images, probs, expected in (("held-out", probe.held_out, held, True), ("look-alike", probe.look_alikes, alike, False)):
        for i, (image, p) in enumerate(list(zip(images, probs))[:SHOWN]):
            answer = persona.understand(question, image=image, max_new_tokens=4).text
            cells.append(Cell(image, [f"{kind} {i + 1}: {question}", f"answer: {answer}", f"p(yes) = {p:.2f}"],
                              correct=(p > 0.5) == expected))
    fact = persona.understand(probe.fact.question, max_new_tokens=16).text
    cells.append(Cell(None, [f"private fact ({probe.fact.attribute})", f"Q: {probe.fact.question}", f"A: {fact}",
                             f"expected: {probe.fact.answer}"]))
    made = persona.generate(name, probe.parg.request, seed=seed)
    trace = made.replay
    cells.append(Cell(made.image, [f"generate: {probe.parg.request}",
                                   *([f"replay Q: {trace.question}", f"replay A: {trace.answer}"] if trace else []),
                                   f"drawn from: {made.prompt_used}", f"(its {probe.parg.attribute}: {probe.parg.answer})"]))
    edited = persona.edit(name, probe.edit.source, probe.edit.instruction, replay=False, seed=seed)
    cells.append(Cell(_side_by_side(probe.edit.source, edited.image), [f"edit: {probe.edit.instruction}", "held-out picture -> result"]))
    return SheetRow(label, cells, [float(p) for p in held], [float(p) for p in alike])


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    half = IMAGE // 2
    out = Image.new("RGB", (IMAGE, IMAGE), PAPER)
    out.paste(_rgb(left).resize((half, half), Image.NEAREST), (0, half // 2))
    out.paste(_rgb(right).resize((half, half), Image.NEAREST), (half, half // 2))
    return out


def _rgb(image) -> Image.Image:
    return image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _printable(text: str) -> str:
    """What an untrained model says can hold control bytes and characters no font has."""
    return "".join(c if c.isprintable() and ord(c) < 0x250 else "?" for c in text)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in _printable(text).split(" "):
        while draw.textlength(word, font=font) > width:  # a word wider than the cell: cut it
            cut = max(1, next(i for i in range(len(word), 0, -1) if draw.textlength(word[:i], font=font) <= width))
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            line = candidate
        else:
            lines.append(line)
            line = word
    return [*lines, line] if line else lines


def _text_block(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: list[str], font, width: int, height: int,
                line_h: int = 13) -> None:
    wrapped = [w for line in lines for w in _wrap(draw, line, font, width)]
    fits = max(1, height // line_h)
    if len(wrapped) > fits:
        wrapped = wrapped[: fits - 1] + [wrapped[fits - 1][: max(0, len(wrapped[fits - 1]) - 3)] + "..."]
    for i, line in enumerate(wrapped):
        draw.text((xy[0], xy[1] + i * line_h), line, fill=INK, font=font)


def _draw_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, cell: Cell, font) -> None:
    left = x + (CELL_W - IMAGE) // 2
    if cell.image is not None:
        sheet.paste(_rgb(cell.image).resize((IMAGE, IMAGE), Image.NEAREST), (left, y + PAD))
        if cell.correct is not None:
            draw.rectangle((left - 3, y + PAD - 3, left + IMAGE + 2, y + PAD + IMAGE + 2), outline=GOOD if cell.correct else BAD, width=3)
        _text_block(draw, (x + PAD, y + PAD + IMAGE + PAD), cell.lines, font, CELL_W - 2 * PAD, TEXT)
    else:  # text only: the whole cell
        draw.rectangle((x + 2, y + 2, x + CELL_W - 3, y + CELL_H - 3), fill=GREY)
        _text_block(draw, (x + PAD, y + PAD), cell.lines, font, CELL_W - 2 * PAD, CELL_H - 2 * PAD)


def compose_sheet(title: str, uploads: list, rows: list[SheetRow]) -> Image.Image:
    """The sheet: `title`, a strip of (up to `COLUMNS`) uploads, then each row; `sheet_size(1 + len(rows))`."""
    sheet = Image.new("RGB", sheet_size(1 + len(rows)), PAPER)
    draw = ImageDraw.Draw(sheet)
    font, bold = _font(11), _font(14)
    draw.text((PAD, 5), _printable(title), fill=INK, font=bold)
    table = [("UPLOADS", [Cell(im, [f"upload {i + 1}"]) for i, im in enumerate(uploads[:COLUMNS])])]
    table += [(row.label, row.cells) for row in rows]
    for r, (label, cells) in enumerate(table):
        y = TITLE_H + r * CELL_H
        draw.line((0, y, sheet.width, y), fill=GREY, width=1)
        draw.text((PAD, y + PAD), label, fill=INK, font=bold)
        if r > 0:
            row = rows[r - 1]
            _text_block(draw, (PAD, y + PAD + 22), [f"held-out p(yes) {row.held_out_mean:.2f}",
                                                     f"look-alikes {row.look_alike_mean:.2f}"], font, LABEL_W - 2 * PAD, 80)
        for c, cell in enumerate(cells[:COLUMNS]):
            _draw_cell(sheet, draw, LABEL_W + c * CELL_W, y, cell, font)
    return sheet
