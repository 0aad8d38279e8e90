"""Where a run departs from the paper's protocol: every setting whose value differs from
``configs/paper.yaml`` (a profile's own or a ``SET``), the pages it touches, and whether it makes
the run's numbers incomparable with the paper's."""

from __future__ import annotations

import pandas as pd

from kvasir_utils import profiles
from kvasir_utils.config import Config

# The notebooks a setting acts in, by the start of its dotted name (the first match wins).
PAGES = [
    ("data.", ("01_download_and_split",)), ("split.", ("01_download_and_split",)),
    ("cache.", ("01_download_and_split",)),
    ("transforms.eval_resize", ("04_evaluate",)),
    ("transforms.mask_overlays", ("02_train", "03_finetune", "04_evaluate")),
    ("transforms.", ("02_train", "03_finetune")),
    ("train.stage2", ("03_finetune",)), ("train.", ("02_train", "03_finetune")),
    ("eval.", ("04_evaluate", "05_compare")),
]
# Settings that change how results are shown or where the same data comes from, not what the models
# learn: listed, but they never make a run incomparable with the paper (the archive's SHA-256 in the
# provenance says whether two runs had the same data).
NEUTRAL = ("eval.", "train.models", "data.url", "data.mirrors", "data.size", "data.sha256", "data.name",
           "data.on_unreadable")
IGNORED = ("profile",)  # the profile's name (science_dict leaves out what changes no result)


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def departures(cfg: Config) -> pd.DataFrame:
    """One row per setting that differs from the paper's protocol: ``setting``, the ``paper``'s
    value, this ``run``'s, the ``pages`` it acts in, and whether it is ``neutral``."""
    ours, paper = _flatten(cfg.science_dict()), _flatten(profiles.load_profile("paper").science_dict())
    rows = []
    for key in sorted(set(ours) | set(paper)):
        if ours.get(key) != paper.get(key) and key not in IGNORED:
            pages = next((p for start, p in PAGES if key.startswith(start)), ())
            rows.append({"setting": key, "paper": paper.get(key), "run": ours.get(key), "pages": pages,
                         "neutral": key.startswith(NEUTRAL)})
    return pd.DataFrame(rows, columns=["setting", "paper", "run", "pages", "neutral"])


def departures_for(cfg: Config, page: str) -> pd.DataFrame:
    """The departures that act in notebook ``page`` (``02_train``...)."""
    found = departures(cfg)
    return found[[page in pages for pages in found["pages"]]].reset_index(drop=True)


def why_not_comparable(cfg: Config) -> str | None:
    """Why this run's numbers cannot be set against the paper's, in words (None: they can)."""
    if cfg.generated_data:
        return "generated data"
    if cfg.data.dataset != "kvasir-v2":  # the paper's claims are about Kvasir v2's eight classes
        return f"another dataset than the paper's Kvasir v2 (data.dataset: {cfg.data.dataset})"
    found = departures(cfg)
    changed = found.loc[~found["neutral"], "setting"].tolist()
    if changed:
        return "settings depart from the paper (" + ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "") + ")"
    return None
