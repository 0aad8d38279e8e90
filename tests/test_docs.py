"""The docs say what the code does: the paper's readings come from one list, every command the
README and docs/ name exists, and every `make ...` line and `SET="..."` in them would start (its
targets and variables exist, its profile or sweep loads with its settings, every model of it has
the layers its readings name), checked without training."""

import functools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kvasir_utils import profiles
from kvasir_utils.analysis import paper
from kvasir_utils.config import PROJECT_ROOT
from kvasir_utils.errors import KvasirError
from kvasir_utils.run import cli, sweep_spec
from kvasir_utils.train import models


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


# -- every make line and SET the docs show would start -------------------------------------------
SHELL_FENCES = {"bash", "sh", "shell", "console"}
# What a reader fills in: `<folder>`, `...`, `path/to/...`. Such a value is skipped, not its line.
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|^path/to/")
COMMENT = re.compile(r"\s+#\s.*$")  # a shell comment, left out of the line a message shows
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


@dataclass(frozen=True)
class Makefile:
    targets: frozenset[str]
    defaults: dict[str, str]  # the variables a user may set (`NAME ?= default`)
    reads: dict[str, frozenset[str]]  # per target, every variable its rule and recipe read, expanded

    def reads_of(self, targets: list[str]) -> frozenset[str]:
        return frozenset().union(*(self.reads.get(t, ()) for t in targets))


def _expand(names: set[str], definitions: dict[str, str]) -> frozenset[str]:
    """The variables ``names`` read, following each definition (``ARGS = --profile '$(PROFILE)'``)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += re.findall(r"\$\((\w+)\)", definitions.get(name, ""))
    return frozenset(seen)


def read_makefile(text: str) -> Makefile:
    definitions, blocks, target = {}, {}, None
    for line in text.splitlines():
        if line.startswith("\t") and target:
            blocks[target] += line
            continue
        target = None
        if defined := re.match(r"^(?:export )?(\w+) *(\?=|:=|=) *(.*)$", line):
            definitions[defined[1]] = defined[3]
        elif rule := re.match(r"^([a-z][a-z-]*):(?!=)(.*)$", line):
            target = rule[1]
            blocks[target] = rule[2]
    defaults = dict(re.findall(r"^(\w+) \?= *(.*)$", text, flags=re.M))
    reads = {t: _expand(set(re.findall(r"\$\((\w+)\)", b)), definitions) for t, b in blocks.items()}
    return Makefile(frozenset(blocks), defaults, reads)


@dataclass
class MakeLine:
    where: str  # the file and the line as written, for the message
    targets: list[str]
    variables: dict[str, str] = field(default_factory=dict)
    unreadable: str = ""  # why the shell could not split the line (an unclosed quote)


def _is_placeholder(value: str) -> bool:
    return bool(PLACEHOLDER.search(value))


def split_settings(text: str) -> list[str]:
    """SET's settings as make splits them (by spaces), a `<placeholder with spaces>` kept whole; the
    placeholders are left out."""
    return [s for s in re.findall(r"(?:<[^>]*>|\S)+", text) if not _is_placeholder(s)]


def _snippets(markdown: str) -> tuple[list[str], dict[str, str]]:
    """The shell lines of code blocks and the inline code outside them; and the files the text
    shows whole (a ```yaml block whose first line is ``# <name>.yaml``), by name."""
    snippets, files, prose, fence, block = [], {}, [], None, []
    for line in markdown.splitlines():
        opened = re.match(r"^\s*```(\w*)", line)
        if opened and fence is None:
            fence, block = opened[1] or "text", []
        elif opened:
            if fence == "yaml" and block and (named := re.match(r"^# (\S+\.ya?ml)$", block[0].strip())):
                files[named[1]] = "\n".join(block) + "\n"
            fence = None
        elif fence is None:
            prose.append(line)
        elif fence in SHELL_FENCES:
            snippets.append(line)
        else:
            block.append(line)
    snippets += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", "\n".join(prose))]
    return snippets, files


def collect(markdown: str, name: str) -> tuple[list[MakeLine], dict[str, str]]:
    """Every `make ...` command (after any ``VAR=value`` environment) and every SET="..." shown on its
    own (checked as `make reproduce SET=...` would take it), and the files the text shows whole."""
    found, snippets_and_files = [], _snippets(markdown)
    for snippet in snippets_and_files[0]:
        if not re.search(r"(^|\s)make(\s|$)|SET=", snippet):
            continue
        where = f"{name}: {COMMENT.sub('', snippet)}"
        try:
            words = shlex.split(snippet, comments=True)
        except ValueError as exc:
            found.append(MakeLine(where, [], unreadable=f"the shell cannot read it: {exc}"))
            continue
        while words and ASSIGNMENT.match(words[0]) and "make" in words:
            words.pop(0)  # RAY_ADDRESS=... make sweep: the environment, not make's variables
        if words[:1] == ["make"]:
            pairs = [ASSIGNMENT.match(w) for w in words[1:]]
            found.append(MakeLine(where, [w for w, m in zip(words[1:], pairs) if not m],
                                  {m[1]: m[2] for m in pairs if m}))
        else:
            found += [MakeLine(where, ["reproduce"], {"SET": w[4:]}) for w in words if w.startswith("SET=")]
    return found, snippets_and_files[1]


@functools.cache
def _profile_problems(profile: str, settings: tuple[str, ...], model: str | None) -> tuple[str, ...]:
    """Load the profile with the settings and check every model's layers against its readings (on
    PyTorch's meta device: no weights, no memory)."""
    try:
        cfg = profiles.load_profile(profile, list(settings))
        models.check_profile(cfg)
    except KvasirError as exc:
        return (str(exc),)
    if model is not None and model not in cfg.train.models:
        return (f"MODEL={model} is not a model of profile {profile} ({', '.join(cfg.train.models)})",)
    return ()


@functools.cache
def _sweep_problems(sweep: str, settings: tuple[str, ...]) -> tuple[str, ...]:
    try:
        sweep_spec.load_sweep(sweep, list(settings))  # every member, as `make sweep` checks it
    except KvasirError as exc:
        return (str(exc),)
    return ()


def _value(line: MakeLine, name: str, default: str | None, files: dict[str, Path]) -> str | None:
    """What make takes for ``name``: the line's value (a file the docs show whole by its path
    here), else ``default``; None for a placeholder, which only the reader can fill in."""
    if name not in line.variables:
        return default
    value = line.variables[name]
    return None if _is_placeholder(value) else str(files.get(value, value))


def _variable_problems(line: MakeLine, makefile: Makefile) -> list[str]:
    """Targets make does not know, variables it does not know or that no target of the line reads."""
    problems = [f"no make target {t!r}" for t in line.targets if t not in makefile.targets]
    reads = makefile.reads_of(line.targets)
    for name in line.variables:
        if name not in makefile.defaults:
            problems.append(f"{name} is not a variable of the Makefile ({', '.join(makefile.defaults)})")
        elif name not in reads and not problems:
            problems.append(f"make {' '.join(line.targets)} does not read {name}")
    return problems


def _profiles_run(line: MakeLine, makefile: Makefile, files: dict[str, Path]) -> list[str]:
    """The profiles the line's targets load, as the Makefile picks them; a placeholder profile is
    the reader's own, which starts from paper.yaml, so its SET is checked against paper."""
    default, reads = makefile.defaults["PROFILE"], makefile.reads_of(line.targets)
    if "cross-evaluate" in line.targets:  # RUN's models scored on TARGET's data; SET applies to both
        run = _value(line, "RUN", _value(line, "PROFILE", default, files), files)
        found = [run, _value(line, "TARGET", makefile.defaults["TARGET"], files)]
    elif "PROFILE" in reads and "sweep" not in line.targets:
        # `make smoke` runs the smoke profile unless given one (its recipe in the Makefile)
        found = [_value(line, "PROFILE", "smoke" if "smoke" in line.targets else default, files)]
    else:
        found = []
    return [profile or default for profile in found]


def check(line: MakeLine, makefile: Makefile, files: dict[str, Path]) -> list[str]:
    """What would stop `line` before it trains: a target or variable make does not know (or that no
    target of the line reads), a profile or sweep that does not load with its SET, a SET a model of
    the profile has no layer for, a MODEL the profile does not train."""
    if line.unreadable:
        return [line.unreadable]
    problems = _variable_problems(line, makefile)
    settings = tuple(split_settings(line.variables.get("SET", "")))
    if "sweep" in line.targets:  # its runs start from the sweep file's base (paper for one's own)
        sweep = _value(line, "SWEEP", makefile.defaults["SWEEP"], files)
        problems += _sweep_problems(sweep, settings) if sweep else \
            _profile_problems(makefile.defaults["PROFILE"], settings, None)
    reads_model = "MODEL" in makefile.reads_of(line.targets)
    model = _value(line, "MODEL", makefile.defaults["MODEL"], files) if reads_model else None
    for profile in _profiles_run(line, makefile, files):
        problems += _profile_problems(profile, settings, model)
    return problems


def problems_in(docs: dict[str, str], makefile: Makefile, folder: Path) -> list[str]:
    """Every problem of every make line and SET in ``docs`` (file name -> markdown), as
    ``file: line: problem``; the files a doc shows whole are written to ``folder`` first."""
    out = []
    for name, text in docs.items():
        lines, shown = collect(text, name)
        files = {}
        for file_name, content in shown.items():
            files[file_name] = folder / file_name
            files[file_name].write_text(content)
        out += [f"{line.where}: {problem}" for line in lines for problem in check(line, makefile, files)]
    return out


def _makefile() -> Makefile:
    return read_makefile((PROJECT_ROOT / "Makefile").read_text())


def test_every_make_line_and_set_in_the_readme_and_docs_would_start(tmp_path):
    docs = _docs()
    assert sum(len(collect(text, name)[0]) for name, text in docs.items()) > 50  # the collector finds them
    problems = problems_in(docs, _makefile(), tmp_path)
    assert not problems, "\n".join(problems)


PLANTED = """
Start with `make smok`, or `make reproduce PROFILE=...` for your own profile.

```bash
make reproduce SET="train.nope=1"                     # a key the schema does not have
make reproduce SET="train.stage2.trainable=block:layer4.2"   # EfficientNet-B0 has no layer4.2
make reproduce SET="train.models=[resnet50] train.stage2.trainable=block:layer4.2"
make predict PROFILE=smoke MODEL=resnet50 IMAGES=<folder>   # fine: the placeholder is skipped
make export PROFILE=smoke MODEL=vgg16
make test PROFILE=smoke
make evaluate PROFILE=mine.yaml FOLDER=x
RAY_ADDRESS=<head-ip>:6379 make sweep SWEEP=seeds SET="paths.runs=<a larger disk> train.stage1.epochs=0"
```

```yaml
# mine.yaml
train:
  batch_size: 0
```

Or give the settings on their own: `SET="train.stage1.lr=-1"`, `SET="paths.runs=..."`, but close
the quote: `make smoke SET="train.seed=1`.
"""


def test_a_planted_wrong_example_fails_and_names_what_is_wrong(tmp_path):
    problems = problems_in({"planted.md": PLANTED}, _makefile(), tmp_path)
    by_line = {}
    for problem in problems:
        line, _, what = problem.partition(": ")[2].partition(": ")
        by_line.setdefault(line, []).append(what)
    assert by_line.pop("make smok") == ["no make target 'smok'"]
    assert "unknown setting 'train.nope'" in by_line.pop('make reproduce SET="train.nope=1"')[0]
    wrong_layer = by_line.pop('make reproduce SET="train.stage2.trainable=block:layer4.2"')[0]
    assert "efficientnet_b0" in wrong_layer and "no module 'layer4.2'" in wrong_layer
    assert by_line.pop("make export PROFILE=smoke MODEL=vgg16") == [
        "MODEL=vgg16 is not a model of profile smoke (resnet50, efficientnet_b0)"]
    assert by_line.pop("make test PROFILE=smoke") == ["make test does not read PROFILE"]
    evaluate = by_line.pop("make evaluate PROFILE=mine.yaml FOLDER=x")
    assert evaluate[0].startswith("FOLDER is not a variable of the Makefile")
    assert "'train.batch_size' = 0 is not valid" in evaluate[1]  # the profile the doc shows, loaded
    sweep = by_line.pop('RAY_ADDRESS=<head-ip>:6379 make sweep SWEEP=seeds SET="paths.runs=<a larger disk> '
                        'train.stage1.epochs=0"')
    assert len(sweep) == 1 and "train.stage1.epochs" in sweep[0]  # the placeholder setting is skipped
    assert "train.stage1.lr" in by_line.pop('SET="train.stage1.lr=-1"')[0]
    assert by_line.pop('make smoke SET="train.seed=1') == ["the shell cannot read it: No closing quotation"]
    assert by_line == {}  # the reproduce line for ResNet50 alone, the placeholders: no problem


def test_no_module_is_longer_than_the_architecture_page_says():
    said = re.search(r"No module is longer than (\d+) lines", (PROJECT_ROOT / "docs" / "architecture.md").read_text())
    assert said, "docs/architecture.md no longer states the longest a module may be; update this test"
    lengths = {p.relative_to(PROJECT_ROOT): len(p.read_text().splitlines())
               for p in (PROJECT_ROOT / "kvasir_utils").rglob("*.py")}
    assert len(lengths) > 50 and {p: n for p, n in lengths.items() if n > int(said[1])} == {}


def test_papermill_reads_every_parameter_of_every_notebook():
    """A comment with a second ``=`` (``make lab PROFILE=...``) made papermill skip that line: every run
    printed "Unable to parse line 2" and "Passed unknown parameter: PROFILE", and ``papermill -p`` could
    not list it. Every name a parameters cell assigns is one that papermill finds, with no warning."""
    import logging

    import nbformat
    import papermill

    for path in sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        assigned = set(re.findall(r"^(\w+)\s*=", cell.source, re.MULTILINE))
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("papermill").addHandler(handler)
        try:
            found = set(papermill.inspect_notebook(str(path)))
        finally:
            logging.getLogger("papermill").removeHandler(handler)
        assert assigned and found == assigned, path.name
        assert not [r.getMessage() for r in records if r.levelno >= logging.WARNING], path.name
