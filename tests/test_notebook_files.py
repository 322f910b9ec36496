"""The committed notebooks as files: valid nbformat, committed without outputs, a papermill parameters cell."""
import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_eight_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_and_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    # nbformat adds a missing id on reading (with a warning in every run): the file itself must have them
    missing = [i for i, cell in enumerate(cells) if "id" not in cell]
    assert not missing, f"cells without an id: {missing}"
    assert len({cell["id"] for cell in cells}) == len(cells), "two cells share an id"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not any(cell.outputs for cell in code), "outputs committed: clear them (executed copies go to results/)"
    assert all(cell.execution_count is None for cell in code), "execution counts committed"
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1, "one cell tagged 'parameters', for papermill"
