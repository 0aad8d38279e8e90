"""What every HTML page of the study shares: the Jinja2 templates (``templates/``), writing a page
whole or not at all, the one stylesheet, and links relative to a page's folder."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import jinja2

from kvasir_utils.files import write_bytes_atomic, write_text_atomic

TEMPLATES = Path(__file__).parent / "templates"


@functools.cache  # one environment: it compiles each template once
def templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def render(template: str, **context) -> str:
    return templates().get_template(template).render(**context)


def write_page(template: str, dest: Path, **context) -> Path:
    return write_text_atomic(dest, render(template, **context))


def copy_stylesheet(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "style.css", (TEMPLATES / "style.css").read_text())


def rel(path: Path, root: Path) -> str:
    """``path`` as a link from a page in ``root``, URL-quoted."""
    return quote(os.path.relpath(path, root), safe="/=,+@()#&")


def copy_into(source: Path, dest: Path) -> Path:
    """A copy of a run's file inside the report folder (pages link to ``dest``, so the folder works
    when copied or shared on its own); copied again only when the source changed."""
    stale = not dest.exists() or (dest.stat().st_mtime, dest.stat().st_size) != (source.stat().st_mtime,
                                                                               source.stat().st_size)
    if stale:
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(dest, source.read_bytes())
        shutil.copystat(source, dest)
    return dest
