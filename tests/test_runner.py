import ast
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

    def changed(path: Path, edit=lambda text: text + b"\n") -> bool:
        original = path.read_bytes()
        path.write_bytes(edit(original))
        try:
            return runner.fingerprint(profile, package, notebooks) != first
        finally:
            path.write_bytes(original)

    model = package / "method" / "model.py"
    assert changed(model, lambda text: text + b"LEVELS = 4\n")
    assert changed(model, lambda text: text.replace(b"def forward(", b"def forward_(", 1))
    assert not changed(model, lambda text: text + b"# a comment\n")  # comments, docstrings and layout: no result
    assert not changed(model, lambda text: text.replace(b'"""', b'"""Said otherwise. ', 1))
    assert changed(package / "weights" / "embedded-embedder.pt")
    assert changed(notebooks / "03_pretraining_and_probe.ipynb")  # its text is in the executed copies
    assert not changed(package / "workflow" / "runner.py", lambda text: text + b"X = 1\n")  # no notebook imports it
    assert not changed(notebooks / runner.TABLES)  # the tables pool the seeds' results after them
    assert runner.fingerprint(get_profile("embedded", seed=43), package, notebooks) != first
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert runner.fingerprint(profile, package, notebooks) != first


def partwhole_folders(source: str) -> set[str]:
    """The package's folders a piece of code imports (`from partwhole.study import x`, `import partwhole.core.plots`,
    `from partwhole import analysis`, and in the package's own __init__ `from .method.model import y`)."""
    folders = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = ("partwhole." if node.level else "") + (node.module or "")
            modules = [f"{module}.{alias.name}" for alias in node.names] if module == "partwhole" else [module]
        else:
            continue
        folders.update(module.split(".")[1] for module in modules if module.startswith("partwhole."))
    return folders


def test_the_folders_left_out_of_the_fingerprint_are_imported_by_no_notebook_and_no_module_before_them():
    import partwhole
    assert set(partwhole.FOLDERS[-len(runner.NOT_IN_NOTEBOOKS):]) == set(runner.NOT_IN_NOTEBOOKS)  # the layout
    # test keeps the folders before them from importing them
    imported = partwhole_folders((runner.PACKAGE / "__init__.py").read_text())
    for path in (artefacts.project_root() / "notebooks").glob("*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                imported |= partwhole_folders(cell.source)
    assert {"method", "study", "analysis"} <= imported and not imported & set(runner.NOT_IN_NOTEBOOKS)
    assert partwhole_folders("from partwhole.workflow import runner") == {"workflow"}  # the check can fail


def test_the_tables_pool_only_the_seeds_made_by_this_code_with_these_settings(tmp_path):
    # a fresh clone's `make study` finds the committed further seeds: pooled only if this code made them
    made_here = runner.fingerprint(get_profile("embedded", **runner.seed_overrides(43)))
    for seed, stamp in ((43, made_here), (44, "made-at-another-commit"), (46, made_here)):
        record = {name: {"fingerprint": stamp, "seconds": 1.0} for name in runner.SEEDED}
        if seed == 46:
            record[runner.SEEDED[-1]]["fingerprint"] = "stopped-before-its-last-notebook"
        artefacts.write_json(tmp_path / "seeds" / f"seed_{seed}" / runner.EXECUTED, record)
    (tmp_path / "seeds" / "seed_45").mkdir()  # no record at all
    artefacts.write_json(tmp_path / "seeds" / "seed_48" / runner.EXECUTED,  # a run of some notebooks, made here
                         {name: {"fingerprint": runner.fingerprint(get_profile("embedded", **runner.seed_overrides(48))),
                                 "seconds": 1.0} for name in runner.SEEDED[:2]})
    (tmp_path / "seeds" / "seed_notes").mkdir()  # not a seed's folder
    assert runner.poolable_seeds("embedded", {}, tmp_path) == ([43, 48], [44, 45, 46])
    # the fingerprint is a seed's own: seed 43's does not pass for seed 47
    artefacts.write_json(tmp_path / "seeds" / "seed_47" / runner.EXECUTED,
                         {name: {"fingerprint": made_here, "seconds": 1.0} for name in runner.SEEDED})
    assert runner.poolable_seeds("embedded", {}, tmp_path)[1] == [44, 45, 46, 47]
    artefacts.write_json(tmp_path / "seeds" / "seed_43" / runner.EXECUTED, [])  # damaged: not pooled, no traceback
    assert runner.poolable_seeds("embedded", {}, tmp_path) == ([48], [43, 44, 45, 46, 47])


def test_metrics_of_further_seeds_are_read_for_the_seeds_given(tmp_path):
    from partwhole.study.results import read_metrics, write_metrics
    for where in (tmp_path, tmp_path / "seeds" / "seed_43", tmp_path / "seeds" / "seed_44"):
        write_metrics(where, "no_pretraining", {"seed": 0})
    assert sorted(read_metrics(tmp_path)) == ["no_pretraining", "seed_43/no_pretraining", "seed_44/no_pretraining"]
    assert sorted(read_metrics(tmp_path, seeds=[44])) == ["no_pretraining", "seed_44/no_pretraining"]
    assert sorted(read_metrics(tmp_path, seeds=[])) == ["no_pretraining"]
