"""Run the study: execute the numbered notebooks in order with papermill for one profile.

    python -m partwhole.workflow.runner             # the embedded default, offline, CPU minutes
    python -m partwhole.workflow.runner --profile paper      # the paper's setting (GPU, internet for downloads)
    python -m partwhole.workflow.runner --profile paper --dry-run
    python -m partwhole.workflow.runner --profile rehearsal  # the paper profile's code on a CPU, random weights
    python -m partwhole.workflow.runner --set pretrain_epochs=2 --set seed=1
    python -m partwhole.workflow.runner --seeds 5 --resume  # repeats with other seeds, keeping what already ran

Executed copies go to results/<profile>/ beside the metrics, tables and figures the notebooks write.
Before any notebook runs, the settings are checked, the dataset folder is listed and every download the profile
needs is fetched or found, so a bad setting or an offline paper run fails at once rather than hours in.
"""
import argparse
import ast
import hashlib
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill

from ..core import artefacts
from ..core.devices import device_name, resolve_device
from ..core.downloads import create_timm_model, needed, preflight
from ..core.timing import format_seconds
from ..datasets.data import COMPANION_SUFFIXES, check_class_count, dataset_root, list_images
from ..study.profiles import Profile, SettingsError, add_profile_arguments, get_profile, parse_overrides, refuse
from ..study.results import DETERMINISM_VARIABLES, library_versions
from ..analysis import miniature
from .costs import study_runs

NOTEBOOKS = (
    "01_teacher_masks.ipynb",
    "02_mask_embeddings.ipynb",
    "03_pretraining_and_probe.ipynb",
    "04_ablations.ipynb",
    "05_baselines.ipynb",
    "06_islands.ipynb",
    "07_controls.ipynb",
    "08_tables.ipynb",
)
# Rerun for every further seed: a seed draws its own scenes, student and data order (and the random weights of an
# embedder that has no others), so the notebooks from the targets on.
SEEDED = ("02_mask_embeddings.ipynb", "03_pretraining_and_probe.ipynb", "04_ablations.ipynb", "05_baselines.ipynb",
          "06_islands.ipynb", "07_controls.ipynb")
TABLES = "08_tables.ipynb"  # last, once every seed has run


def seed_overrides(seed: int) -> dict:
    """One repeat of the study: every random source drawn from `seed` (scenes, student, data order, and the weights
    of an embedder that has no trained ones; trained weights, hub or shipped, are fixed like a dataset)."""
    return {"seed": seed, "dataset_seed": seed, "embedder_seed": seed}


# One thread per process: results on a CPU depend on the number of threads (reduction order), and the notebooks run
# their independent runs side by side, one process per core (core/workers.py), which is also what keeps a busy
# machine from slowing them many-fold
CPU_THREADS = 1


def reproducible_cpu_environment() -> dict:
    """Variables that make CPU arithmetic the same on every x86-64 machine with AVX2, whatever else its processor
    offers: PyTorch's own kernels, oneDNN and MKL kept to their AVX2 code paths, and a fixed number of threads
    (in this model one thread more moves every gradient by about 1e-3). Set for the notebooks' kernels; results then
    depend on the library versions alone."""
    threads = {"OMP_NUM_THREADS": str(CPU_THREADS), "MKL_NUM_THREADS": str(CPU_THREADS)}
    if platform.machine() not in ("x86_64", "AMD64"):
        return threads
    return threads | {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


# The warnings every import of the libraries gives, which say nothing about the study: fastai's own use of
# torch.jit.script, and tqdm.auto imported (by a library) where ipywidgets is not installed
LIBRARY_WARNINGS = ("`torch.jit.script` is deprecated", "IProgress not found")
# For the notebooks' kernels in a batch run: no progress bars in the executed copies, nor those warnings
BATCH_ENVIRONMENT = {"TQDM_DISABLE": "1", "PYTHONWARNINGS": ",".join(f"ignore:{m}" for m in LIBRARY_WARNINGS)}
PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm bar
# The kernels' own log at errors only: ipykernel warns at every start that its local TCP sockets are unencrypted
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


def quiet_stderr(text: str) -> str:
    """A kernel's stderr without tqdm bars and without the library warnings above (each warning's line and the
    indented source line after it)."""
    kept, skip_source = [], False
    for line in re.split(r"(?<=\n)|\r", text):
        if skip_source and line.startswith("  "):
            skip_source = False
            continue
        skip_source = any(message in line for message in LIBRARY_WARNINGS)
        if not skip_source and not PROGRESS_BAR.search(line):
            kept.append(line)
    return "".join(kept).lstrip("\n")


PACKAGE = Path(__file__).resolve().parents[1]
# The package's folders no notebook imports (the runner itself, the GPU tools): a change there changes no result
NOT_IN_NOTEBOOKS = ("workflow", "scale")
EXECUTED = "executed.json"  # in each results folder: per notebook, the fingerprint it ran under and its seconds


def code_of(path: Path) -> bytes:
    """What a file of the package contributes to a fingerprint: a Python module's syntax tree without its docstrings
    (so that comments, docstrings and layout, which change no result, do not count), any other file's bytes."""
    if path.suffix != ".py":
        return path.read_bytes()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def fingerprint(profile: Profile, package: Path = PACKAGE, notebooks: Path | None = None) -> str:
    """What a seed's results depend on, as one hash: the notebooks before the tables and the code of every file of
    the package they import (`code_of`), the profile's settings (seed included) and device, the libraries' versions
    and the variables the runner sets for the kernels (threads, CPU code paths). Equal fingerprints give equal
    results: the study on a CPU is deterministic (`reproducible_cpu_environment`)."""
    notebooks = notebooks or artefacts.project_root() / "notebooks"
    files = sorted(path for path in package.rglob("*") if path.is_file() and "__pycache__" not in path.parts
                   and path.relative_to(package).parts[0] not in NOT_IN_NOTEBOOKS)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(package)).encode() + b"\0" + code_of(path))
    for name in NOTEBOOKS:
        if name != TABLES:  # the executed copies keep the notebooks' text: all of it counts
            digest.update(name.encode() + b"\0" + (notebooks / name).read_bytes())
    variables = sorted(set(BATCH_ENVIRONMENT) | set(reproducible_cpu_environment()) | set(DETERMINISM_VARIABLES))
    context = {"settings": profile.to_dict(), "device": resolve_device(profile.device), "machine": platform.machine(),
               "libraries": library_versions(), "environment": {name: os.environ.get(name) for name in variables}}
    digest.update(json.dumps(context, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def clean_executed(path: Path):
    """An executed copy as a reader wants it: without fastai's progress bars and epoch tables (HTML and CSS; the
    notebooks plot the histories), tqdm bars and library warnings, and with this checkout's paths relative to it."""
    notebook = nbformat.read(path, as_version=4)
    root = str(artefacts.project_root()) + os.sep
    for cell in notebook.cells:
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            html = "".join(data.get("text/html", ""))
            if "fastprogress" in html or "<progress" in html or html.lstrip().startswith("<style") or (
                    "text/html" in data and not html.strip()):
                continue
            if output.get("name") == "stderr":
                output["text"] = quiet_stderr("".join(output["text"]))
                if not output["text"].strip():
                    continue
            if "text" in output:
                output["text"] = "".join(output["text"]).replace(root, "")
            for kind in ("text/plain", "text/markdown"):
                if kind in output.get("data", {}):
                    output["data"][kind] = "".join(output["data"][kind]).replace(root, "")
            kept.append(output)
        if cell.cell_type == "code":
            cell.outputs = kept
    run = notebook.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if str(run.get(key, "")).startswith(root):
            run[key] = run[key][len(root):]
    with artefacts.atomic_write(path) as tmp:
        nbformat.write(notebook, tmp)


def notebook_relative(path: Path) -> str:
    """A folder as the notebooks (run in notebooks/) see it: relative inside this checkout, absolute outside it."""
    path, root = Path(path).resolve(), artefacts.project_root().resolve()
    return os.path.relpath(path, root / "notebooks") if path.is_relative_to(root) else str(path)


def check_dataset(profile: Profile) -> str | None:
    """Find (or generate, or download) the dataset and list both splits; the error message, or None."""
    try:
        root = dataset_root(profile)
        train = list_images(root, "train", companions=COMPANION_SUFFIXES[profile.dataset])
        check_class_count(train, profile.agglomerator_config(target_dim=1).n_classes)
        list_images(root, "val", train.classes, COMPANION_SUFFIXES[profile.dataset])
    except Exception as error:  # every dataset error says what to do
        return f"- the dataset: {error}"
    return None


def print_plan(profile: Profile, timed: bool):
    """Every run of the study with its size, in notebook order; with its cost on this device when `timed` (a GPU,
    or the embedded profile: timing the paper's models on a CPU would say nothing about the GPU they will run on)."""
    device = resolve_device(profile.device)
    timed = timed and (device.startswith("cuda") or profile.dataset == "synthetic")
    dim = create_timm_model(profile.embedder, False, num_classes=0, **profile.embedder_kwargs).num_features
    runs = study_runs(profile, dim, device if timed else None)
    where = f", estimated on {device_name(device)}" if timed else ""
    print(f"runs{where}:")
    for run in runs:
        epochs = f"{run.epochs} epoch" + ("s" if run.epochs != 1 else "")
        cost = f", {format_seconds(run.seconds)}" if timed else ""
        print(f"  {run.notebook} {run.name}: {run.images} images x {epochs}{cost}")
    if timed:
        print(f"  total of the timed runs: {format_seconds(sum(r.seconds for r in runs if r.seconds is not None))}")
    elif profile.dataset != "synthetic":
        print("  (costs: run the dry run on the GPU you will use for estimates)")


class NotebookFailed(RuntimeError):
    pass


ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def where_it_failed(traceback: list[str], frames: int = 3) -> str:
    """The last `frames` frames of a notebook's traceback, each its header ("Cell In[17], line 4", "File
    .../train.py:94, in held_out_mse") and the line it marks, so that the message names the failing line even
    where the executed copy stays behind (a GPU check's stays on the GPU machine)."""
    lines = []
    for frame in (ANSI_COLOUR.sub("", entry) for entry in traceback):
        if frame.startswith(("Cell In", "File ")):
            header, *body = frame.splitlines()
            marked = [line.strip() for line in body if line.lstrip().startswith("-")]
            lines.append("  " + header + "".join(f"\n    {line}" for line in marked[:1]))
    return "\n".join(lines[-frames:])


def run_study(profile_name: str = "embedded", overrides: dict | None = None, results_dir=None, runs_dir=None,
              notebooks=NOTEBOOKS, seeds: int = 1, resume: bool = False) -> dict[str, float]:
    """Execute the notebooks in order, the executed copies written to `results_dir`; returns each notebook's seconds
    ({"seed_<s>/<notebook>": seconds} for further seeds).

    With seeds > 1, the seeded notebooks run again for the profile's seed + 1, + 2, ..., every random source drawn
    from that seed, each seed's executed copies, metrics and figures in results/<profile>/seeds/seed_<s>/ and its
    caches, targets and checkpoints in runs/<profile>/seeds/seed_<s>/, before the tables notebook pools them.
    With `resume`, each seed's leading notebooks executed under its fingerprint (`fingerprint`: the same code,
    settings and libraries) are kept, with the seconds they took then, and the rest of the seed runs: a stopped
    study goes on from the notebook it stopped in."""
    overrides = overrides or {}
    profile = get_profile(profile_name, **overrides)
    results_dir = Path(results_dir) if results_dir else artefacts.results_dir(profile.name)
    runs_dir = Path(runs_dir).resolve() if runs_dir else artefacts.runs_dir(profile.name)
    os.environ.update(BATCH_ENVIRONMENT)  # inherited by the notebooks' kernels, as are these:
    if resolve_device(profile.device) == "cpu":
        os.environ.update(reproducible_cpu_environment())
    seconds = {}
    with artefacts.exclusive(runs_dir, "running the study"):  # its notebooks' kernels share the lock
        seeded = [(overrides, results_dir, runs_dir, [name for name in notebooks if name != TABLES], "")]
        for seed in range(profile.seed + 1, profile.seed + seeds):
            folder = Path("seeds") / f"seed_{seed}"
            seeded.append((overrides | seed_overrides(seed), results_dir / folder, runs_dir / folder,
                           [name for name in notebooks if name in SEEDED], f"seed_{seed}/"))
        for seed_settings, seed_results, seed_runs, names, key in seeded:
            for name, took in _run_seed(names, profile_name, seed_settings, seed_results, seed_runs, resume).items():
                seconds[key + name] = took
        if TABLES in notebooks:
            pooled, left_out = poolable_seeds(profile_name, overrides, results_dir)
            if left_out:
                print(f"seeds {', '.join(map(str, left_out))} left out of the tables: {results_dir / 'seeds'} holds "
                      "them made by other code or settings (`--seeds N --resume` runs them again)", flush=True)
            seconds[TABLES] = _execute(TABLES, profile_name, overrides, results_dir, runs_dir, {"seeds": pooled})
            if profile.dataset == "synthetic":  # the goals of the miniature are those of the generated scenes
                print(f"{miniature.write_report(results_dir, seconds, pooled)}: the study in miniature, goal by goal")
    return seconds


def _run_seed(names: list[str], profile_name: str, overrides: dict, results_dir: Path, runs_dir: Path,
              resume: bool) -> dict[str, float]:
    """One seed's notebooks, each recorded in results_dir/executed.json with its fingerprint and seconds as soon as
    it ends. With `resume`, the leading notebooks recorded under this fingerprint whose executed copies are there
    are kept and the others run; only leading ones, since a notebook reads what the ones before it left in
    runs_dir, and none where runs_dir holds nothing (the notebooks still to run would miss those checkpoints)."""
    stamp = fingerprint(get_profile(profile_name, **overrides))
    path = results_dir / EXECUTED
    record = artefacts.read_json(path, "record of executed notebooks", "Delete it; its notebooks run again.") \
        if path.exists() else {}
    kept = 0
    while resume and kept < len(names) and record.get(names[kept], {}).get("fingerprint") == stamp \
            and (results_dir / names[kept]).exists():
        kept += 1
    if kept < len(names) and not _holds_artefacts(runs_dir):
        kept = 0
    if kept:
        print(f"{_label(profile_name, overrides)} {', '.join(name[:2] for name in names[:kept])} kept: executed by "
              f"this code with these settings (fingerprint {stamp}) in {results_dir}", flush=True)
    seconds = {name: record[name]["seconds"] for name in names[:kept]}
    for name in names[kept:]:
        seconds[name] = _execute(name, profile_name, overrides, results_dir, runs_dir)
        record[name] = {"fingerprint": stamp, "seconds": round(seconds[name], 1)}
        artefacts.write_json(path, record)
    return seconds


def poolable_seeds(profile_name: str, overrides: dict, results_dir: Path) -> tuple[list[int], list[int]]:
    """(pooled, left out): the further seeds in results_dir/seeds whose executed notebooks were all executed by the
    present code with the present settings (their executed.json holds this checkout's fingerprint for each one it
    records, and records one at least), and the others, made at another commit or with other settings, in part or
    whole: the tables never pool runs of different code."""
    seeds = sorted(int(match[1]) for folder in (Path(results_dir) / "seeds").glob("seed_*")
                   if (match := re.fullmatch(r"seed_(\d+)", folder.name)) and folder.is_dir())
    pooled, left_out = [], []
    for seed in seeds:
        stamp = fingerprint(get_profile(profile_name, **overrides | seed_overrides(seed)))
        path = Path(results_dir) / "seeds" / f"seed_{seed}" / EXECUTED
        record = artefacts.read_json(path, "record of executed notebooks", "Delete it; its notebooks run again.") \
            if path.exists() else {}
        ran = [record[name] for name in SEEDED if name in record] if isinstance(record, dict) else []
        made_here = bool(ran) and all(isinstance(entry, dict) and entry.get("fingerprint") == stamp for entry in ran)
        (pooled if made_here else left_out).append(seed)
    return pooled, left_out


def _holds_artefacts(runs_dir: Path) -> bool:
    """Whether the notebooks left anything in a seed's runs folder (not only the runner's lock, or other seeds)."""
    return runs_dir.exists() and any(not (entry.name.startswith(artefacts.LOCK_NAME) or entry.name == "seeds")
                                     for entry in runs_dir.iterdir())


def _label(profile_name: str, overrides: dict) -> str:
    return f"[{profile_name}, seed {overrides['seed']}]" if "seed" in overrides else f"[{profile_name}]"


def _execute(name: str, profile_name: str, overrides: dict, results_dir: Path, runs_dir: Path,
             more_parameters: dict | None = None) -> float:
    results_dir.mkdir(parents=True, exist_ok=True)
    label = _label(profile_name, overrides)
    parameters = {"profile": profile_name, "overrides": overrides, "results_dir": notebook_relative(results_dir),
                  "runs_dir": notebook_relative(runs_dir)} | (more_parameters or {})
    start = time.perf_counter()
    print(f"{label} {name} ...", flush=True)
    try:
        papermill.execute_notebook(artefacts.project_root() / "notebooks" / name, results_dir / name,
                                   parameters=parameters, cwd=artefacts.project_root() / "notebooks",
                                   progress_bar=False, extra_arguments=KERNEL_ARGUMENTS)
    except OSError as error:  # papermill writes the executed copy itself
        if error.errno not in artefacts.SPACE_ERRORS:
            raise
        raise artefacts.NoSpace(error.errno, f"{artefacts.SPACE_ERRORS[error.errno]} while writing {results_dir / name}: "
                                f"free space on {results_dir} or give another results_dir") from error
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(
            f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
            f"{where_it_failed(error.traceback)}\n"
            f"The executed copy, up to the failing cell, is kept for inspection: {results_dir / name}"
        ) from error
    seconds = time.perf_counter() - start
    clean_executed(results_dir / name)
    print(f"{label} {name} done in {seconds:.0f} s", flush=True)
    return seconds


def cannot_start(failures: list) -> bool:
    """Print the failures of the checks before a run (None: passed), if any; whether there were."""
    failures = [failure for failure in failures if failure]
    if failures:
        print("Cannot start:\n" + "\n".join(failures), file=sys.stderr)
    return bool(failures)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_arguments(parser, "embedded")
    parser.add_argument("--dry-run", action="store_true", help="check the settings and the dataset, print every run "
                        "and download (with costs on a GPU, or for the embedded profile), run nothing")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run the seeded notebooks for this many seeds (the profile's seed, +1, ...); the tables "
                             "report mean ± standard deviation")
    parser.add_argument("--resume", action="store_true",
                        help="keep the notebooks of each seed already executed into the results folder by this code "
                             "with these settings (its executed.json says so), from the first on; run the rest")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 1:
            raise SettingsError(f"--seeds {args.seeds}: --seeds takes a whole number of at least 1")
        overrides = parse_overrides(args.overrides)
        profile = get_profile(args.profile, **overrides)
        resolve_device(profile.device)
    except SettingsError as error:
        return refuse(error)

    print(f"profile {profile.name}" + (f", with {json.dumps(overrides)}" if overrides else ", as defined"))
    if args.seeds > 1:
        print(f"  {', '.join(name[:2] for name in SEEDED)} again for seeds {profile.seed + 1} to "
              f"{profile.seed + args.seeds - 1} (scenes, student and data order drawn from each), then the "
              "tables with mean ± standard deviation")
    print_plan(profile, timed=args.dry_run)
    downloads = needed(profile)
    print("downloads: " + ("none (offline)" if not downloads else ""))
    for item in downloads:
        print(f"  {item['what']} [{item['size']}]")
    if args.dry_run:  # the dataset folder is checked if given; downloads are only listed
        return 2 if cannot_start([check_dataset(profile)] if profile.dataset_path else []) else 0
    try:  # the lock first: checking the dataset may generate it, which another run must not do at the same time
        with artefacts.exclusive(artefacts.runs_dir(profile.name), "running the study"):
            # the dataset's own download is among the downloads
            if cannot_start(preflight(profile) or [check_dataset(profile)]):
                return 2
            seconds = run_study(args.profile, overrides, seeds=args.seeds, resume=args.resume)
    except (NotebookFailed, artefacts.FolderBusy) as error:
        print(error, file=sys.stderr)
        return 1
    print(f"study finished in {sum(seconds.values()):.0f} s; executed notebooks and results in "
          f"{artefacts.results_dir(profile.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
