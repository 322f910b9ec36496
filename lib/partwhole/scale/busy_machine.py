"""The CPU check: one notebook of the study timed on a quiet machine and beside busy processes, with the ratio.

    python -m partwhole.scale.busy_machine                        # notebook 04 of the embedded profile (make cpu-check)
    python -m partwhole.scale.busy_machine --notebook 07_controls.ipynb --repeats 3
    python -m partwhole.scale.busy_machine --set pretrain_epochs=4  # any profile field (a quicker, smaller check)

A laptop with a browser and JupyterLab open is a busy machine. The study runs each independent training run in a
worker process of one thread (core/workers.py), so a busy process takes at most its share of the cores; a process
of two threads that spin-wait on each other was measured up to 10x slower beside one. The goal: with one busy
process (`while True: pass`) the notebook takes at most BUSY_GOAL times its quiet time.

The notebooks before the timed one run once, untimed, to make what it reads; each timed run then starts from a copy
of that state (its own runs would otherwise be found finished and loaded). Quiet and busy runs alternate, and the
medians are compared. The times, the ratio and the machine go to results/<profile>/cpu-check.json.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ..core import artefacts
from ..core.workers import cpu_cores
from ..study.profiles import SettingsError, add_profile_arguments, get_profile, parse_overrides, refuse
from ..study.results import cpu_model, git_commit
from ..workflow.runner import NOTEBOOKS, TABLES, run_study

BUSY_GOAL = 2.0  # a notebook beside one busy process: at most twice its quiet time
BUSY_LOOP = "while True: pass"


def busy_processes(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


def timed_run(profile: str, overrides: dict, notebook: str, prepared: Path, scratch: Path, busy: int) -> float:
    """Seconds of one run of `notebook`, from a copy of the prepared runs and results folders, beside `busy` busy
    processes."""
    for name in ("runs", "results"):
        shutil.rmtree(scratch / name, ignore_errors=True)
        shutil.copytree(prepared / name, scratch / name)
    others = busy_processes(busy)
    try:
        return run_study(profile, overrides, results_dir=scratch / "results", runs_dir=scratch / "runs",
                         notebooks=(notebook,))[notebook]
    finally:
        for process in others:
            process.kill()
            process.wait()


def check(profile: str, overrides: dict, notebook: str, repeats: int, busy: int, work: Path) -> dict:
    prepared, scratch = work / "prepared", work / "scratch"
    before = NOTEBOOKS[: NOTEBOOKS.index(notebook)]
    print(f"preparing: {', '.join(name[:2] for name in before) or 'nothing'} (untimed)", flush=True)
    run_study(profile, overrides, results_dir=prepared / "results", runs_dir=prepared / "runs", notebooks=before)
    quiet, busy_seconds = [], []
    for repeat in range(repeats):
        quiet.append(timed_run(profile, overrides, notebook, prepared, scratch, 0))
        busy_seconds.append(timed_run(profile, overrides, notebook, prepared, scratch, busy))
        print(f"repeat {repeat + 1}: quiet {quiet[-1]:.0f} s, beside {busy} busy process(es) {busy_seconds[-1]:.0f} s",
              flush=True)
    ratio = statistics.median(busy_seconds) / statistics.median(quiet)
    return {
        "notebook": notebook, "profile": profile, "overrides": overrides, "busy_processes": busy,
        "busy_process": f"python -c '{BUSY_LOOP}'", "quiet_s": [round(s, 1) for s in quiet],
        "busy_s": [round(s, 1) for s in busy_seconds], "median_quiet_s": round(statistics.median(quiet), 1),
        "median_busy_s": round(statistics.median(busy_seconds), 1), "ratio": round(ratio, 2), "goal": BUSY_GOAL,
        "verdict": "met" if ratio <= BUSY_GOAL else "missed", "cpu": cpu_model(), "cpu_cores": cpu_cores(),
        "git_commit": git_commit(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_arguments(parser, "embedded")
    parser.add_argument("--notebook", default="04_ablations.ipynb", help="the notebook to time (default: 04)")
    parser.add_argument("--repeats", type=int, default=1, help="quiet and busy runs each (medians compared)")
    parser.add_argument("--busy", type=int, default=1, help="busy processes beside the busy runs (default 1)")
    parser.add_argument("--out", default=None, help="the JSON file (default results/<profile>/cpu-check.json)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        get_profile(args.profile, **overrides)
        if args.notebook not in NOTEBOOKS or args.notebook == TABLES:
            raise SettingsError(f"--notebook {args.notebook!r}: one of {', '.join(NOTEBOOKS[:-1])}")
        if args.repeats < 1 or args.busy < 1:
            raise SettingsError("--repeats and --busy take whole numbers of at least 1")
    except SettingsError as error:
        return refuse(error)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryDirectory(prefix="partwhole-cpu-check-") as work:
        record = check(args.profile, overrides, args.notebook, args.repeats, args.busy, Path(work))
    out = Path(args.out) if args.out else artefacts.results_dir(args.profile) / "cpu-check.json"
    artefacts.write_json(out, record)
    print(f"{args.notebook}: quiet {record['median_quiet_s']:.0f} s, beside {args.busy} busy process(es) "
          f"{record['median_busy_s']:.0f} s: {record['ratio']:.2f}x (goal at most {BUSY_GOAL:g}x: {record['verdict']}); "
          f"{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
