"""The set-up `make` does: pyproject.toml's dependencies installed at the versions constraints.txt pins."""
import re
import tomllib

from partwhole.core.artefacts import project_root


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    lines = (project_root() / "constraints.txt").read_text().splitlines()
    return {normalised(name): version for name, version in
            (line.split("==") for line in lines if line.strip() and not line.startswith("#"))}


def test_every_dependency_is_pinned_to_one_version():
    project = tomllib.loads((project_root() / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    names = {normalised(re.match(r"[A-Za-z0-9_.-]+", requirement).group()) for requirement in wanted}
    assert names - set(pins()) == set()


def test_the_makefile_and_the_conda_file_install_with_the_pins():
    assert "-c constraints.txt" in (project_root() / "Makefile").read_text()
    assert "-c constraints.txt" in (project_root() / "environment.yml").read_text()
