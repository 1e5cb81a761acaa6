"""The analysis notebooks (jupytext percent scripts) are executed, so they never rot."""

from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.e2e  # the notebooks executed on a finished study

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, paper_quick, monkeypatch):
    # Against the results of scripts/reproduce_paper.sh --quick, as a reader would run them.
    assert NOTEBOOKS, "no notebooks found"
    results, _, _ = paper_quick
    monkeypatch.setenv("SADDLESTUDY_RESULTS", str(results / "scaling"))
    monkeypatch.setenv("SADDLESTUDY_RESULTS_ROOT", str(results))
    notebook = jupytext.read(path)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    outputs = [o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", [])]
    assert any("points in" in text for text in outputs)
    assert not any(
        o.get("output_type") == "error" for c in notebook.cells for o in c.get("outputs", [])
    )
