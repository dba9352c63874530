"""ruff (configured in pyproject.toml) passes on the library, the tests and the notebooks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                        "nsrom_lib", "tests", "notebooks"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def _lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    """Run import-linter with the contracts of `cwd`/pyproject.toml on the nsrom_lib under pythonpath."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {"PATH": str(exe.parent), "PYTHONPATH": str(pythonpath), "HOME": str(cwd)}
    return subprocess.run([str(exe), "--no-cache"], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_layers_are_kept():
    """The import contracts of pyproject.toml (docs/design.md, "Who imports whom") hold."""
    r = _lint_imports(ROOT, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_layers_catch_an_import_that_points_up(tmp_path):
    """A copy of the library where data/ imports the pipeline breaks the contracts, by name."""
    shutil.copytree(ROOT / "nsrom_lib", tmp_path / "nsrom_lib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    io = tmp_path / "nsrom_lib" / "data" / "io.py"
    io.write_text(io.read_text() + "\nimport nsrom_lib.pipeline  # a deliberate upward import\n")
    r = _lint_imports(tmp_path, tmp_path)
    assert r.returncode != 0, r.stdout
    assert "nsrom_lib.data.io -> nsrom_lib.pipeline" in r.stdout, r.stdout
