"""Result files with provenance, the paper's reported numbers, and the tables that put them side by side.

Every measured number lives in a metrics file (results/<profile>/metrics/<run>.json) that says how it was
made: profile, seed, device, git commit, library versions, wall time. The paper's numbers live in one
data file, results/reported_in_paper.json, and are only ever shown labelled as the paper's.
"""
import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from .paths import atomic_write, project_root

LIBRARIES = ("torch", "torchvision", "timm", "fastai", "segment-anything", "lion-pytorch", "numpy", "papermill")


def git_commit() -> str:
    """HEAD of the checkout, with '+dirty' when tracked files differ from it (then the code is not HEAD's)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(profile, device: str) -> dict:
    return {
        "profile": profile.name,
        "seed": profile.seed,
        "device": device_name(device),
        "git_commit": git_commit(),
        "libraries": library_versions(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": profile.to_dict(),
    }


def write_metrics(results_dir: Path, run: str, record: dict) -> Path:
    path = Path(results_dir) / "metrics" / f"{run}.json"
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({"run": run} | record, indent=1) + "\n")
    return path


def read_metrics(results_dir: Path) -> dict[str, dict]:
    folder = Path(results_dir) / "metrics"
    if not folder.is_dir():
        raise FileNotFoundError(f"no metrics under {folder}: run the training notebooks of this profile first")
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def reported_in_paper() -> dict:
    return json.loads((project_root() / "results" / "reported_in_paper.json").read_text())


def source_of(record: dict) -> str:
    """One line that says where a measured number came from."""
    return f"measured: {record['profile']}, {record['device']}, seed {record['seed']}, commit {record['git_commit']}"


def percent(fraction) -> str:
    return "" if fraction is None else f"{100 * fraction:.2f}%"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


MEASURED_HEADER = ["Accuracy (paper)", "Accuracy, val folder", "Accuracy, 20% of train", "Source"]


def paper_table(name: str, metrics: dict[str, dict], paper: dict) -> str:
    """One of the paper's tables in its layout: each paper row, then the measured runs that stand for it.

    A run stands for a paper row when its metrics file says so: `paper_rows[name]` is the row's id in
    reported_in_paper.json (e.g. "without cropping" in table1), and `cells` holds the run's own values for the
    table's columns.
    """
    table = paper["tables"][name]
    columns = list(table["columns"])
    rows = []
    for reported in table["rows"]:
        rows.append([reported[c] for c in columns] + [f"{reported['accuracy']:.2f}%", "", "", paper["source"]])
        for record in metrics.values():
            if record.get("paper_rows", {}).get(name) == reported["id"]:
                cells = [record["cells"].get(c, "") for c in columns]
                rows.append(cells + ["", percent(record["accuracy"]["val"]), percent(record["accuracy"]["holdout"]),
                                     source_of(record)])
    return f"**{table['title']}**\n\n" + markdown_table(list(table["columns"].values()) + MEASURED_HEADER, rows)
