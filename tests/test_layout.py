"""The package's layout: every module in one of the folders of `partwhole.FOLDERS`, and no import running from a
folder to one listed after it (the method never imports the study's machinery, say)."""
import ast
import importlib
from pathlib import Path

import pytest

import partwhole

PACKAGE = Path(partwhole.__file__).parent
RANK = {folder: rank for rank, folder in enumerate(partwhole.FOLDERS)}
ROOT = len(RANK)  # the package's own __init__, which imports from the folders: above all of them


def folder_modules() -> list[Path]:
    return sorted(p for folder in partwhole.FOLDERS for p in (PACKAGE / folder).glob("*.py"))


def runtime_imports(tree: ast.AST):
    """The import statements that run: those under `if TYPE_CHECKING:` (a type named in a hint) are left out."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in runtime_imports(ast.Module([child], [])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        else:
            yield from runtime_imports(node)


def imported_folders(source: str, module: tuple[str, ...]) -> list[tuple[int, str | None]]:
    """(line, folder) for each place inside partwhole imported by the module at `module` (its path in the package,
    e.g. ("method", "train")); folder None: the package's own __init__."""
    found = []
    for node in runtime_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".")[1:] for alias in node.names if alias.name.split(".")[0] == "partwhole"]
        elif node.level == 0:
            parts = (node.module or "").split(".")
            targets = [parts[1:]] if parts[0] == "partwhole" else []
        else:
            base = list(module[:-1])[:len(module) - node.level]
            targets = ([base + node.module.split(".")] if node.module else
                       [base + [alias.name] for alias in node.names])
        found += [(node.lineno, target[0] if target and target[0] in RANK else None) for target in targets]
    return found


def upward_imports(source: str, module: tuple[str, ...]) -> list[str]:
    own = RANK[module[0]]
    return [f"{'/'.join(module)}.py:{line} imports from {folder or 'the package root'}"
            for line, folder in imported_folders(source, module) if (RANK[folder] if folder else ROOT) > own]


def test_every_module_sits_in_a_folder():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    assert folders == set(partwhole.FOLDERS), "a folder of modules that partwhole.FOLDERS does not rank, or the reverse"
    for folder in partwhole.FOLDERS:
        assert (PACKAGE / folder / "__init__.py").exists()
        assert not [p for p in (PACKAGE / folder).rglob("*.py") if p.parent != PACKAGE / folder], "folders are flat"


def test_no_import_runs_from_a_folder_to_one_after_it():
    upward = [line for path in folder_modules()
              for line in upward_imports(path.read_text(), path.relative_to(PACKAGE).with_suffix("").parts)]
    assert upward == []


@pytest.mark.parametrize("source, module, upward", [
    ("from ..study.profiles import Profile", ("method", "train"), True),
    ("from ..core.artefacts import atomic_write", ("method", "train"), False),
    ("from .model import Agglomerator", ("method", "train"), False),
    ("from ..workflow import runner", ("analysis", "controls"), True),
    ("from .. import Study", ("core", "plots"), True),
    ("from partwhole.scale.benchmark import main", ("study", "study"), True),
    ("import partwhole.analysis.islands", ("method", "model"), True),
    ("def f():\n    from ..study import profiles", ("method", "sam"), True),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..study.profiles import Profile",
     ("method", "train"), False),
    ("if TYPE_CHECKING:\n    pass\nelse:\n    from ..study.profiles import Profile", ("method", "train"), True),
])
def test_the_check_finds_imports_that_run_up(source, module, upward):
    assert bool(upward_imports(source, module)) == upward


@pytest.mark.parametrize("folder", partwhole.FOLDERS)
def test_each_folder_lists_its_modules_and_public_names(folder):
    package = importlib.import_module(f"partwhole.{folder}")
    modules = sorted(p.stem for p in (PACKAGE / folder).glob("*.py") if p.name != "__init__.py")
    assert [m for m in modules if f"`{m}`" not in package.__doc__] == [], "a module missing from the docstring"
    public = getattr(package, "__all__", [])
    assert [name for name in public if not hasattr(package, name)] == []
    # a public name like a module's would hide the module from `from partwhole.<folder> import <module>`
    assert [name for name in public if name in modules] == []
