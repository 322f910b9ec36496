"""Where things live: generated data and run artefacts (ignored by git) and results (committed)."""
import errno
from contextlib import contextmanager
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


@contextmanager
def atomic_write(path: Path):
    """Yield a temporary name beside `path` to write to; rename it into place only if the writing succeeded.

    A killed or failed write leaves at most `<name>.tmp`, never a complete-looking `<name>`; a full disk
    becomes an error that names the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"disk full while writing {path}; nothing half-written was kept. Free space and run again"
            ) from error
        raise
