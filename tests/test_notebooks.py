"""Every numbered notebook: stored clean, parameterised, and executed with papermill (smoke).

Policy (README, developer section): tests execute each notebook with papermill and
`profile="smoke"` into a temporary run folder; nbval is not used because it cannot
inject parameters. An error in any cell fails the test.
"""

from __future__ import annotations

import json

import pytest

from nsrom_lib.pipeline import list_notebooks

NOTEBOOKS = list_notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs_with_parameters(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") for c in code), "strip outputs before committing"
    assert not any(c.get("execution_count") for c in code), "strip execution counts"
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    src = "".join(params[0]["source"])
    for name in ("profile", "run_dir", "seed", "data_root"):
        assert f"{name} =" in src, f"parameter {name} missing"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
    assert any("## Summary" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executes_on_smoke(path, tmp_path):
    import papermill as pm

    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters={"profile": "smoke", "run_dir": str(tmp_path / "run")},
                        kernel_name="python3", cwd=str(path.parent), progress_bar=False)
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any(o.get("data", {}).get("image/png") for c in nb["cells"] for o in c.get("outputs", []))
