"""Every numbered notebook: stored clean, parameterised, and executed with papermill (smoke).

Policy (README, developer section): tests execute each notebook with papermill and
`profile="smoke"` into a temporary run folder; nbval is not used because it cannot
inject parameters. An error in any cell fails the test.
"""

from __future__ import annotations

import json
import re

import pytest

from nsrom_lib.pipeline import execute_notebook, list_notebooks, widget_outputs

NOTEBOOKS = list_notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", [*NOTEBOOKS, NOTEBOOKS[0].parent / "explore.ipynb"],
                         ids=lambda p: p.name)
def test_valid_for_its_nbformat_version(path):
    """Cell ids, say, are only allowed from nbformat 4.5 on; papermill logs an error otherwise."""
    import nbformat

    nbformat.validate(nbformat.read(path, as_version=4))


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
    assert any("## Exercises" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reads_as_a_chapter(path):
    """The pipeline figure first ("you are here"), short code cells, a legend on every label overlay."""
    nb = json.loads(path.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    number = path.name.split("_")[0]
    assert f'pipeline_figure(here="{number}")' in code[0], "the first code cell draws the pipeline figure"
    long = [f"cell {i}: {len(src.splitlines())} lines" for i, src in enumerate(code) if len(src.splitlines()) > 20]
    assert not long, f"code cells over 20 lines (move the work into nsrom_lib): {long}"
    unexplained = [src.splitlines()[0] for src in code
                   if re.search(r"\b(overlay|render_overlays|ThresholdExplorer)\(", src) and "classes=" not in src]
    assert not unexplained, f"label overlays without a legend (pass classes=): {unexplained}"


def test_notebook_02_teaches_oaa_in_few_cells():
    nb = json.loads(next(p for p in NOTEBOOKS if p.name.startswith("02_")).read_text())
    assert len(nb["cells"]) <= 25, "02 teaches CAM, OAA and the IAM; the analysis is in 02b"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executes_on_smoke(path, tmp_path):
    out = tmp_path / path.name
    execute_notebook(path, out, {"profile": "smoke", "run_dir": str(tmp_path / "run")})
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any(o.get("data", {}).get("image/png") for c in nb["cells"] for o in c.get("outputs", []))
    assert not widget_outputs(nb), "frozen widgets in the executed copy (tqdm bars, widget reprs)"
