"""The docs say what the code does: the paper's readings come from one list, and every make target
and command the README and docs/ name exists."""

import re

import yaml

from kvasir_utils.analysis import paper
from kvasir_utils.config import PROJECT_ROOT
from kvasir_utils.run import cli


def _ambiguous_settings_in_paper_yaml() -> set[str]:
    """The dotted key under each `# AMBIGUOUS` comment block of configs/paper.yaml."""
    found, path, pending = set(), [], False
    for line in (PROJECT_ROOT / "configs" / "paper.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending = pending or stripped.startswith("# AMBIGUOUS")
            continue
        if not stripped or ":" not in stripped or stripped.startswith("-"):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        path = [*path[:depth], stripped.split(":")[0]]
        if pending:
            found.add(".".join(path))
            pending = False
    return found


def test_paper_yaml_marks_exactly_the_settings_the_study_lists_as_ambiguous():
    assert _ambiguous_settings_in_paper_yaml() == {a.setting for a in paper.AMBIGUITIES}
    values = yaml.safe_load((PROJECT_ROOT / "configs" / "paper.yaml").read_text())
    for ambiguity in paper.AMBIGUITIES:
        paper.setting_value(values, ambiguity.setting)  # each names a real setting


def test_the_readings_table_in_the_docs_is_made_from_the_list():
    text = cli.READINGS_DOC.read_text()
    assert cli.readings_doc_text(text) == text, "docs/paper-readings.md is stale: run `make docs`"
    assert all(f"`{a.setting}`" in text for a in paper.AMBIGUITIES)


def _docs() -> dict[str, str]:
    files = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
    return {p.name: p.read_text() for p in files}


def test_every_make_target_in_the_readme_and_docs_exists():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    for name, text in _docs().items():
        named = set(re.findall(r"`make ([a-z][a-z-]*)", text))
        assert named <= targets, (name, named - targets)


def test_every_python_command_in_the_readme_and_docs_exists():
    commands = set(cli._parser()._subparsers._group_actions[0].choices)
    for name, text in _docs().items():
        named = set(re.findall(r"python -m kvasir_utils ([a-z-]+)", text))
        assert named <= commands, (name, named - commands)


def test_the_readme_is_an_entry_and_links_only_to_docs_that_exist():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (PROJECT_ROOT / target).is_file(), target
