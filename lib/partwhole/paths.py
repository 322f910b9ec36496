"""Where things live: generated data and run artefacts (ignored by git) and results (committed)."""
from pathlib import Path


def project_root() -> Path:
    """The checkout holding this package (lib/partwhole), whatever the current directory (notebooks run in notebooks/)."""
    here = Path(__file__).resolve().parents[2]
    if (here / "notebooks").is_dir():
        return here
    return Path.cwd()  # installed without a checkout: work where the user stands


def data_dir() -> Path:
    return project_root() / "data"


def runs_dir(profile_name: str) -> Path:
    """Targets, image caches and checkpoints of one profile (large; never committed)."""
    return project_root() / "runs" / profile_name


def results_dir(profile_name: str) -> Path:
    """Executed notebooks, metrics, tables and figures of one profile (small; committed)."""
    return project_root() / "results" / profile_name


def atomic_path(path: Path) -> Path:
    """Temporary name beside `path`; write there, then `tmp.replace(path)`, so a killed run leaves no half file."""
    return path.with_name(f".{path.name}.partial")
