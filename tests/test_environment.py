"""environment.yml (conda) and pyproject.toml must name the same pinned packages."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_norm(r) for r in project["dependencies"] + extras["dev"] + extras["crf"]}
    pip_lines = [
        m.group(1)
        for m in re.finditer(r"^\s+-\s+(\S.*?)\s*$", (ROOT / "environment.yml").read_text(), re.M)
    ]
    listed = {_norm(x) for x in pip_lines if "==" in x}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert "-e .[dev,crf]" in pip_lines  # the package itself, with the extras `make setup` installs
    assert all("==" in r for r in wanted), "pin every dependency with =="
