import nbformat

from partwhole import artefacts
from partwhole.runner import clean_executed, notebook_relative


def test_executed_copies_lose_progress_bars_and_this_checkouts_paths(tmp_path):
    root = str(artefacts.project_root())
    cell = nbformat.v4.new_code_cell("study.pretrain_and_probe(...)")
    cell.outputs = [
        nbformat.v4.new_output("display_data", {"text/html": "<style> progress { width: 300px } </style>"}),
        nbformat.v4.new_output("display_data", {"text/html": "<table class=\"fastprogress\"><tr><td>0</td></tr>"}),
        nbformat.v4.new_output("stream", name="stdout", text=f"targets in {root}/runs/embedded/targets\n"),
        nbformat.v4.new_output("display_data", {"text/markdown": "| a table |", "text/plain": "<Markdown>"}),
    ]
    path = tmp_path / "executed.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"kept as written: {root}"), cell]),
                   path)
    clean_executed(path)
    cleaned = nbformat.read(path, as_version=4)
    outputs = cleaned.cells[1].outputs
    assert [o.output_type for o in outputs] == ["stream", "display_data"]
    assert outputs[0].text == "targets in runs/embedded/targets\n"
    assert outputs[1].data["text/markdown"] == "| a table |"
    assert cleaned.cells[0].source == f"kept as written: {root}"


def test_folders_reach_the_notebooks_relative_inside_the_checkout(tmp_path):
    root = artefacts.project_root()
    assert notebook_relative(root / "results" / "embedded") == "../results/embedded"
    assert notebook_relative(tmp_path) == str(tmp_path.resolve())
