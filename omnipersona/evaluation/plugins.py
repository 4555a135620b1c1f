"""Evaluation plug-ins a job config names: where eval sets come from and who judges pictures.

Two kinds, each named by a short name or as `package.module:attribute`:

    eval_set_reader   (filesystem, concept_dir, concept: ConceptId, options: EvalOptions)
                      -> ConceptEvalSet | None (None: no eval set for this concept)
                      `world`: the manifests `omnipersona.world.uploads.write_eval_sets` writes
    judge             (image_size: int, log: Callable[[str], None]) -> ImageJudge, made once per job
                      `world`: the world-trained probe (`omnipersona.pretrain.probe`)

Reading a config only checks a name's form (`check_plugin`); the module is imported when the stage
runs (`load_plugin`), so the stage code never imports what a plug-in is made of.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Protocol

from ..identity import ConceptId
from .eval_set import ConceptEvalSet, EvalOptions
from .harness import ImageJudge

NAMED_PLUGINS: dict[str, dict[str, str]] = {
    "eval_set_reader": {"world": "omnipersona.world.eval_sets:read_eval_set"},
    "judge": {"world": "omnipersona.pretrain.probe:world_judge"},
}
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_PATH = re.compile(rf"{_DOTTED}:{_DOTTED}")


class EvalSetReader(Protocol):
    def __call__(self, filesystem, concept_dir: str, concept: ConceptId, options: EvalOptions) -> ConceptEvalSet | None: ...


class JudgeFactory(Protocol):
    def __call__(self, image_size: int, log: Callable[[str], None]) -> ImageJudge: ...


def _kinds(kind: str) -> dict[str, str]:
    if kind not in NAMED_PLUGINS:
        raise ValueError(f"unknown plug-in kind {kind!r}; kinds: {', '.join(NAMED_PLUGINS)}")
    return NAMED_PLUGINS[kind]


def check_plugin(kind: str, ref: str) -> str:
    """`ref` if it is a known name of this kind or has the `package.module:attribute` form (no import)."""
    names = _kinds(kind)
    if ref in names or _PATH.fullmatch(ref):
        return ref
    raise ValueError(f"{kind} {ref!r} is neither a known name ({', '.join(names)}) nor 'package.module:attribute'")


def plugin_path(kind: str, ref: str) -> str:
    """The `package.module:attribute` a name stands for (a path stays as it is)."""
    return _kinds(kind).get(check_plugin(kind, ref), ref)


def load_plugin(kind: str, ref: str) -> Callable:
    """Import the callable `ref` names; ValueError naming the path when it is missing or not callable."""
    path = plugin_path(kind, ref)
    module_name, _, attribute = path.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"{kind} {ref!r}: cannot import {module_name!r} ({exc})") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{kind} {ref!r}: {path} does not exist")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{kind} {ref!r}: {path} is not callable")
    return target
