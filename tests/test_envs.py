"""envs/cmimh.yaml lists the same dependencies as pyproject.toml (conda names where they differ)."""

import re
import tomllib

import yaml

from conftest import REPO

CONDA_NAMES = {"torch": "pytorch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].strip().lower()


def test_conda_env_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {CONDA_NAMES.get(_name(r), _name(r)) for r in project["dependencies"]}
    env = yaml.safe_load((REPO / "envs" / "cmimh.yaml").read_text())
    have = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            have |= {_name(p) for p in dep.get("pip", [])}
        else:
            have.add(_name(dep))
    assert wanted <= have, f"missing from envs/cmimh.yaml: {sorted(wanted - have)}"
