"""The eight Kvasir v2 classes as the paper's tables name them (display names, abbreviations)."""

from __future__ import annotations

CLASSES = [
    "dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
    "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis",
]


ABBREVIATIONS = dict(zip(CLASSES, ["DLP", "DRM", "ESO", "NC", "NP", "NZL", "POL", "UC"]))


def display_name(class_name: str) -> str:
    """``dyed-lifted-polyps`` -> ``Dyed-lifted-polyps``, as the paper's tables write it."""
    return class_name[:1].upper() + class_name[1:]


def abbreviation(class_name: str) -> str:
    return ABBREVIATIONS.get(class_name, class_name)
