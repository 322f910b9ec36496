import shutil
from pathlib import Path

import nbformat

from partwhole.core import artefacts
from partwhole.study.profiles import get_profile
from partwhole.workflow import runner
from partwhole.workflow.runner import clean_executed, notebook_relative, quiet_stderr


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
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"kept as written: {root}"), cell])
    notebook.metadata["papermill"] = {"input_path": f"{root}/notebooks/03.ipynb", "duration": 1.0}
    nbformat.write(notebook, path)
    clean_executed(path)
    cleaned = nbformat.read(path, as_version=4)
    outputs = cleaned.cells[1].outputs
    assert [o.output_type for o in outputs] == ["stream", "display_data"]
    assert outputs[0].text == "targets in runs/embedded/targets\n"
    assert outputs[1].data["text/markdown"] == "| a table |"
    assert cleaned.cells[0].source == f"kept as written: {root}"
    assert cleaned.metadata["papermill"] == {"input_path": "notebooks/03.ipynb", "duration": 1.0}


def test_folders_reach_the_notebooks_relative_inside_the_checkout(tmp_path):
    root = artefacts.project_root()
    assert notebook_relative(root / "results" / "embedded") == "../results/embedded"
    assert notebook_relative(tmp_path) == str(tmp_path.resolve())


def test_stderr_keeps_what_matters_and_loses_bars_and_library_warnings():
    text = (".venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update\n"
            "  from .autonotebook import tqdm as notebook_tqdm\n"
            "\rtargets train:   0%|          | 0/800 [00:00<?, ?image/s]"
            "\rtargets train: 100%|##########| 800/800 [00:40<00:00, 19.65image/s]\n"
            "UserWarning: the mask embedder: out of memory at batch 64, trying 32\n")
    assert quiet_stderr(text) == "UserWarning: the mask embedder: out of memory at batch 64, trying 32\n"
    assert quiet_stderr("") == ""


def test_the_fingerprint_follows_the_code_notebooks_settings_and_environment_the_results_depend_on(tmp_path,
                                                                                                 monkeypatch):
    package, notebooks = tmp_path / "partwhole", tmp_path / "notebooks"
    shutil.copytree(runner.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(runner.artefacts.project_root() / "notebooks", notebooks)
    profile = get_profile("embedded")
    first = runner.fingerprint(profile, package, notebooks)
    assert runner.fingerprint(profile, package, notebooks) == first

    def changed(path: Path) -> bool:
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        try:
            return runner.fingerprint(profile, package, notebooks) != first
        finally:
            path.write_bytes(original)

    assert changed(package / "method" / "model.py") and changed(package / "weights" / "embedded-embedder.pt")
    assert changed(notebooks / "03_pretraining_and_probe.ipynb")
    assert not changed(package / "workflow" / "runner.py")  # no notebook imports the runner
    assert not changed(notebooks / runner.TABLES)  # the tables pool the seeds' results after them
    assert runner.fingerprint(get_profile("embedded", seed=43), package, notebooks) != first
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert runner.fingerprint(profile, package, notebooks) != first
