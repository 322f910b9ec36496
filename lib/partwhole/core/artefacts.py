"""Where the study's files live, how they are written and how they are read back.

Generated data and run artefacts (image caches, targets, checkpoints) go under data/ and runs/ (ignored by git);
results (executed notebooks, metrics, tables, figures) under results/ (committed). Every file is written under a
temporary name and renamed when complete (`atomic_write`), so nothing half-written is taken for a result. Every
file is read back through `read_json`, `load_array` or `load_torch`, which name the file and the way to rebuild it
when it is damaged, and every artefact made for some settings is checked against the settings of the run that
wants it by `check_settings`, one convention for all of them. One run at a time writes in a runs folder
(`exclusive`, a lock naming its holder).
"""
import errno
import hashlib
import json
import os
import socket
import sys
import time
import pickle
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def project_root() -> Path:
    """The checkout holding this package (lib/partwhole), whatever the current directory (notebooks run in notebooks/)."""
    here = Path(__file__).resolve().parents[3]
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


SPACE_ERRORS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit reached"}


class NoSpace(OSError):
    """A write that failed for space or a file-size limit; the message names the file and what to do."""


@contextmanager
def atomic_write(path: Path):
    """Yield a temporary name beside `path` to write to; rename it into place only if the writing succeeded.

    Every file of the study is written through here. A killed or failed write leaves at most `<name>.tmp`, never a
    complete-looking `<name>`; a failed one removes its temporary file, and a full disk, a quota or a file-size limit
    (`ulimit -f`) becomes a NoSpace error that names the file and the fix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in SPACE_ERRORS and not isinstance(error, NoSpace):
            raise NoSpace(error.errno, f"{SPACE_ERRORS[error.errno]} while writing {path} (nothing half-written was "
                          f"kept): free space on {path.parent}, raise the limit (ulimit -f), or give another folder "
                          "(runs_dir / results_dir)") from error
        raise


def preallocated_memmap(path: Path, dtype, shape: tuple) -> np.memmap:
    """A new .npy file memory-mapped for writing, its blocks allocated on disk first: a sparse file on a full disk
    would kill the process with a bus error (SIGBUS) at the first page that finds no space; allocated up front, a
    full disk or a file-size limit is an OSError here (which `atomic_write` turns into NoSpace)."""
    start = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).offset  # the header, a sparse body
    with open(path, "r+b") as file:
        end = os.fstat(file.fileno()).st_size
        if hasattr(os, "posix_fallocate"):  # glibc writes zeros itself where the file system cannot allocate
            os.posix_fallocate(file.fileno(), start, end - start)
        else:  # macOS: write the zeros
            file.seek(start)
            for offset in range(start, end, 1 << 24):
                file.write(bytes(min(1 << 24, end - offset)))
    return np.lib.format.open_memmap(path, mode="r+")


LOCK_NAME = "run.lock"
HELD_LOCK = "PARTWHOLE_RUN_LOCK"  # the token of the lock held by the run this process belongs to (inherited by kernels)


class FolderBusy(RuntimeError):
    """A runs folder in use by another run: its lock names the holder."""


def _lock_holder(lock: Path) -> dict | None:
    """The holder a lock file names, or None where there is none (any more). A lock is written whole before it
    appears (`exclusive` links it into place), so a file that does not name its holder as `exclusive` writes one
    (a JSON object with a pid and a token) was not written by this code: FolderBusy, naming it and the fix."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        holder = None
    if not (isinstance(holder, dict) and isinstance(holder.get("token"), str) and holder["token"]
            and "pid" in holder):
        raise FolderBusy(f"{lock} is not a lock this study wrote (it names no holder: {text[:80]!r}): if no run is "
                         f"using {lock.parent}, delete it")
    return holder


def _holder_is_gone(holder: dict) -> bool:
    """Whether the process that took a lock has ended (only knowable for a process on this machine)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


@contextmanager
def exclusive(folder: Path, what: str):
    """One run at a time in a runs folder: a lock file (run.lock) naming its holder (pid, host, command, start time,
    what it does) for the time of the block. A lock whose holder process has ended is cleared; a live one is refused
    with FolderBusy. The run that holds a lock may nest blocks and its child processes (the runner's notebook
    kernels) share it; under torchrun, rank 0 holds it for every rank."""
    lock = Path(folder) / LOCK_NAME
    held, mine = _lock_holder(lock), os.environ.get(HELD_LOCK)
    if (held and mine and held["token"] == mine) or int(os.environ.get("RANK", 0)) > 0:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    token = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv), "what": what,
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": token}
    staged = lock.with_name(f"{LOCK_NAME}.{token}")
    write_json(staged, holder)
    try:
        while True:
            try:
                os.link(staged, lock)  # atomic: fails if the lock exists, and never shows a half-written lock
                break
            except FileExistsError:
                held = _lock_holder(lock)
                if held is not None and _holder_is_gone(held):
                    print(f"{lock}: its holder (pid {held['pid']}, {held.get('what')}) has ended; lock cleared")
                    lock.unlink(missing_ok=True)
                    continue
                if held is None:  # released between the two looks: try again
                    continue
                who = (f"pid {held['pid']} on {held.get('host')} ({held.get('command')!r}), {held.get('what')} since "
                       f"{held.get('started')}")
                raise FolderBusy(f"{Path(folder)} is in use by {who}: wait for it, or give this run another runs_dir. "
                                 f"If that process is gone, delete {lock}") from None
    finally:
        staged.unlink(missing_ok=True)
    before = os.environ.get(HELD_LOCK)
    os.environ[HELD_LOCK] = token
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(HELD_LOCK, None)
        else:
            os.environ[HELD_LOCK] = before
        try:
            ours = (_lock_holder(lock) or {}).get("token") == token
        except FolderBusy:  # overwritten while held: not ours to remove
            ours = False
        if ours:
            lock.unlink(missing_ok=True)


def write_json(path: Path, value) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n")
    return Path(path)


class DamagedFile(RuntimeError):
    """A file that cannot be read back, or does not hold what its manifest says."""


class SettingsError(ValueError):
    """A profile, field or value that does not exist or is not allowed; the message names it and what it accepts."""


class SettingsMismatch(ValueError):
    """An artefact made for other settings than those of the run that wants it."""


def _damaged(path: Path, what: str, problem: str, fix: str) -> DamagedFile:
    return DamagedFile(f"{what} {path} is damaged ({problem}). {fix}")


def read_json(path: Path, what: str, fix: str):
    """A JSON file, or DamagedFile naming it, what it is and `fix` (how to rebuild it)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _damaged(path, what, f"not valid JSON: {error}", fix) from error


def load_array(path: Path, what: str, fix: str, shape: tuple | None = None, dtype=None, mmap: bool = True) -> np.ndarray:
    """A .npy file, memory-mapped (read-only) or read, checked to have `shape` and `dtype` when given (None in
    `shape`: any size)."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as error:  # a truncated file: "mmap length is greater than file size"
        raise _damaged(path, what, f"{type(error).__name__}: {error}", fix) from error
    if shape is not None and (len(shape) != array.ndim or any(s is not None and s != a for s, a in zip(shape, array.shape))):
        raise _damaged(path, what, f"shape {tuple(array.shape)}, its manifest says {tuple(shape)}", fix)
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise _damaged(path, what, f"dtype {array.dtype}, its manifest says {np.dtype(dtype)}", fix)
    return array


def first_non_finite(array: np.ndarray, block: int = 256) -> int | None:
    """The index (along the first axis) of the first item holding NaN or infinity, or None; read in blocks, so that a
    memory-mapped file of gigabytes is scanned without being loaded whole."""
    for start in range(0, len(array), block):
        finite = np.isfinite(np.asarray(array[start : start + block])).reshape(min(block, len(array) - start), -1)
        bad = np.flatnonzero(~finite.all(axis=1))
        if len(bad):
            return start + int(bad[0])
    return None


def load_torch(path: Path, what: str, fix: str, weights_only: bool = False):
    """torch.load of one of the study's own files on the CPU, or DamagedFile naming it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as error:
        # a truncated zip: "PytorchStreamReader failed reading zip archive"; an empty file: "Ran out of input"
        raise _damaged(path, what, f"{type(error).__name__}: {error}", fix) from error


def sha256(path: Path) -> str:
    """A file's SHA-256 (hex), read in blocks: checkpoints are gigabytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def differing(stored: dict, wanted: dict) -> list[str]:
    """The keys whose values differ between two settings records (either may lack a key)."""
    return sorted(key for key in set(stored) | set(wanted) if stored.get(key) != wanted.get(key))


def _short(value) -> str:
    if isinstance(value, list) and len(value) > 3:
        return f"[{len(value)} items: {value[0]!r} ... {value[-1]!r}]"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_settings(path: Path, stored: dict, wanted: dict, what: str, fix: str):
    """Refuse an artefact made for other settings: SettingsMismatch naming the file, each differing field with its
    stored and wanted value, and `fix`. Settings are compared as they read back from JSON (tuples are lists)."""
    wanted = json.loads(json.dumps(wanted))
    fields = differing(stored, wanted)
    if fields:
        details = "; ".join(f"{k}: stored {_short(stored.get(k))}, this run {_short(wanted.get(k))}" for k in fields)
        raise SettingsMismatch(f"{what} {path} was made for other settings ({details}). {fix}")
