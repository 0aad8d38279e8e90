import re
import tomllib

import yaml

from kvasir_utils.config import PROJECT_ROOT

CONDA_NAMES = {"torch": "pytorch", "ray": "ray-core"}  # conda-forge spells a few packages differently


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].strip().lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {CONDA_NAMES.get(_name(r), _name(r)) for r in project["dependencies"]}
    wanted |= {_name(r) for r in project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    pip = {_name(d) for block in env["dependencies"] if isinstance(block, dict) for d in block.get("pip", [])}
    assert conda | pip == wanted
