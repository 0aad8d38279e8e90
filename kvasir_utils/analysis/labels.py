"""Abbreviations for any list of classes, short and unique (the confusion matrix's rows and columns);
Kvasir v2's eight keep the paper's. The class lists, the paper's abbreviations and display names
are facts of ``kvasir_utils.datasets``, named here too for the tables' callers."""

from __future__ import annotations

import re

from kvasir_utils.datasets import KVASIR_V2_ABBREVIATIONS, KVASIR_V2_CLASSES, display_name

CLASSES = KVASIR_V2_CLASSES
ABBREVIATIONS = KVASIR_V2_ABBREVIATIONS
__all__ = ["ABBREVIATIONS", "CLASSES", "abbreviation", "abbreviations", "display_name"]


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]


def _candidates(name: str):
    """Abbreviations of ``name`` from shortest to longest: the paper's own for Kvasir v2's classes;
    else the initials of its words (numbers kept whole: ``bbps-0-1`` -> ``B01``), or the first three
    letters of a one-word name; then longer prefixes of its last word."""
    if name in ABBREVIATIONS:
        yield ABBREVIATIONS[name]
    words = _words(name) or [name]
    head = "".join(w if w.isdigit() else w[0] for w in words[:-1]).upper()
    last = words[-1]
    if len(words) == 1:
        yield last[:3].upper()
    elif last.isdigit():
        yield head + last
    for length in range(1, len(last) + 1):
        yield (head + last[:length]).upper()


def abbreviations(classes: list[str]) -> dict[str, str]:
    """A short, unique abbreviation for each class (the same list always gives the same ones): the
    paper's for Kvasir v2's names (``ABBREVIATIONS``), initials for the others,
    lengthened where two would be equal, numbered where nothing else tells them apart."""
    taken: dict[str, str] = {}
    pending = list(dict.fromkeys(classes))
    for name in sorted(pending, key=lambda n: (n not in ABBREVIATIONS, n)):  # the paper's first
        clash = set(taken.values())
        others = [_first(other) for other in pending if other != name and other not in taken]
        choice = next((c for c in _candidates(name) if c not in clash and c not in others), None)
        if choice is None:
            base = next(iter(_candidates(name)))
            choice = next(f"{base}-{i}" for i in range(2, len(classes) + 2) if f"{base}-{i}" not in clash)
        taken[name] = choice
    return {name: taken[name] for name in classes}


def _first(name: str) -> str:
    return next(iter(_candidates(name)))


def abbreviation(class_name: str) -> str:
    """One class's abbreviation on its own (tables of several classes use ``abbreviations``)."""
    return abbreviations([class_name])[class_name]
