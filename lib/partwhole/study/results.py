"""Result files with provenance, the paper's reported numbers, and the tables that put them side by side.

Every measured number lives in a metrics file (results/<profile>/metrics/<run>.json) that says how it was
made: profile, seed, device, git commit, library versions, wall time. The paper's numbers live in one
data file, results/reported_in_paper.json, and are only ever shown labelled as the paper's.
"""
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import scipy.stats

from ..core.artefacts import project_root, read_json, write_json
from ..core.devices import device_name

LIBRARIES = ("torch", "torchvision", "timm", "fastai", "segment-anything", "lion-pytorch", "kornia", "numpy", "papermill")
DETERMINISM_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OMP_NUM_THREADS",
                         "CUBLAS_WORKSPACE_CONFIG")


def git_commit() -> str:
    """HEAD of the checkout, with '+dirty' when tracked files other than results/ differ from it (then the code is
    not HEAD's); results/ is what the study writes, so a rerun over committed results stays HEAD's code. A copy of
    the code without its .git folder (a container image, say) names its commit in PARTWHOLE_GIT_COMMIT."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return os.environ.get("PARTWHOLE_GIT_COMMIT", "unknown") + " (no .git: as PARTWHOLE_GIT_COMMIT says)"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results") else "")


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The processor's model name (results on a CPU can depend on its instruction set)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(profile, device: str) -> dict:
    return {
        "profile": profile.name,
        "seed": profile.seed,
        "device": device_name(device),
        "cpu": cpu_model(),
        "determinism": {name: os.environ.get(name) for name in DETERMINISM_VARIABLES},
        "git_commit": git_commit(),
        "libraries": library_versions(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": profile.to_dict(),
    }


def write_metrics(results_dir: Path, run: str, record: dict) -> Path:
    return write_json(Path(results_dir) / "metrics" / f"{run}.json", {"run": run} | record)


def read_metrics(results_dir: Path, seeds=None) -> dict[str, dict]:
    """Every metrics file of a profile: the first seed's under metrics/ (keyed by run), those of further seeds
    under seeds/seed_<s>/metrics/ (keyed "seed_<s>/<run>"), of the further `seeds` only where given (the runner
    gives those made by the present code with the present settings)."""
    results_dir = Path(results_dir)
    folder = results_dir / "metrics"
    if not folder.is_dir():
        raise FileNotFoundError(f"no metrics under {folder}: run the training notebooks of this profile first")
    fix = "Run the notebook that writes it again."
    records = {p.stem: read_json(p, "metrics file", fix) for p in sorted(folder.glob("*.json"))}
    for path in sorted(results_dir.glob("seeds/seed_*/metrics/*.json")):
        if seeds is None or path.parent.parent.name in {f"seed_{seed}" for seed in seeds}:
            records[f"{path.parent.parent.name}/{path.stem}"] = read_json(path, "metrics file", fix)
    return records


SEED_FIELDS = ("seed", "dataset_seed", "embedder_seed")  # what a repeat of a run changes


def replicates(metrics: dict[str, dict]) -> list[list[dict]]:
    """The records grouped into repeats of one run: the same run with the same settings but for its seeds.
    A run whose settings changed between seeds (other epochs, say) is not pooled: it forms a group of its own."""
    groups = {}
    for record in metrics.values():
        settings = {k: v for k, v in record.get("settings", {}).items() if k not in SEED_FIELDS}
        groups.setdefault((record["run"], json.dumps(settings, sort_keys=True)), []).append(record)
    return [sorted(group, key=lambda r: r["seed"]) for group in groups.values()]


def reported_in_paper() -> dict:
    return read_json(project_root() / "results" / "reported_in_paper.json", "the paper's numbers",
                     "Restore it with git checkout.")


def source_of(*records: dict) -> str:
    """One line that says where a measured number came from (one run, or the repeats of a run over seeds)."""
    first = records[0]
    seeds = ", ".join(str(r["seed"]) for r in records)
    commits = ", ".join(sorted({r["git_commit"] for r in records}))
    devices = ", ".join(sorted({r["device"] for r in records}))
    return (f"measured: {first['profile']}, {devices}, seed{'s' if len(records) > 1 else ''} {seeds}, "
            f"commit{'s' if ', ' in commits else ''} {commits}")


def percent(fraction) -> str:
    return "" if fraction is None else f"{100 * fraction:.2f}%"


def accuracy_line(accuracy: dict) -> str:
    """A run's accuracies in one line: "val 71.25%, holdout 74.38%"."""
    return ", ".join(f"{split} {percent(accuracy[split])}" for split in ("val", "holdout") if split in accuracy)


def spread(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the values given (None left out)."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)


PREDICTION_LEVEL = 0.95


def prediction_interval(values, bounds: tuple | None = (0.0, 1.0)) -> tuple[float, float] | None:
    """Where one further seed is expected to land (95%): mean ± t(n - 1) x sd x sqrt(1 + 1/n), Student's t for
    repeats drawn from a normal distribution, cut to `bounds` (an accuracy stays within 0 and 1); None for one value.
    The standard deviation alone understates it at few seeds: at n = 5 the interval is ± 3.0 sd."""
    mean, sd, n = spread(values)
    if n < 2:
        return None
    half = scipy.stats.t.ppf(0.5 + PREDICTION_LEVEL / 2, n - 1) * sd * np.sqrt(1 + 1 / n)
    low, high = mean - half, mean + half
    return (low, high) if bounds is None else (max(low, bounds[0]), min(high, bounds[1]))


def mean_and_spread(values, scale: float = 100, unit: str = "%", digits: int = 1,
                    bounds: tuple | None = (0.0, 1.0)) -> str:
    """"61.2%" for one run; "61.2 ± 1.2% (n=5; next seed 57.6 to 64.8%)" for repeats: mean ± sample standard
    deviation, and the 95% prediction interval of a further seed (`prediction_interval`, within `bounds`)."""
    mean, sd, n = spread(values)
    if n == 1:
        return f"{scale * mean:.{digits}f}{unit}"
    low, high = prediction_interval(values, bounds)
    return (f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}{unit} (n={n}; next seed {scale * low:.{digits}f} "
            f"to {scale * high:.{digits}f}{unit})")


def accuracy_cells(records: list[dict]) -> list[str]:
    """The val-folder and 20%-holdout accuracy of a run's repeats."""
    return [mean_and_spread([r["accuracy"][split] for r in records], digits=2) for split in ("val", "holdout")]


def chance_margin(n_classes: int, n_images: int) -> float:
    """Chance (1 / classes) plus two binomial standard deviations over `n_images`: an accuracy below it is at chance."""
    chance = 1 / n_classes
    return chance + 2 * np.sqrt(chance * (1 - chance) / n_images)


def compared_with(name: str, accuracy: float, reference_name: str, reference: float, n_classes: int,
                  n_images: int) -> str:
    """One computed sentence comparing a val accuracy with a reference's, saying when either is at chance."""
    def said(label, value):
        at_chance = " (at chance: below " + f"{100 * chance_margin(n_classes, n_images):.1f}%)" \
            if value < chance_margin(n_classes, n_images) else ""
        return f"{label} {100 * value:.1f}%{at_chance}"
    difference = 100 * (accuracy - reference)
    direction = "above" if difference > 0 else "below" if difference < 0 else "equal to"
    return f"{said(name, accuracy)}: {abs(difference):.1f} points {direction} {said(reference_name, reference)}"


PLATEAU_RULE = ("a run has plateaued when, over the last quarter of its epochs (at least the last one), its held-out "
                "accuracy rose by less than 1 point or, where it has none (a pretraining), its held-out loss fell by "
                "less than 1%; a one-epoch run has not, nor has a run at chance on val (below chance + 2 binomial SD): "
                "flat at chance is a run that never started learning")


def plateaued(history: dict, at_chance: bool = False) -> bool:
    """The plateau rule (PLATEAU_RULE) on one phase's per-epoch history: held-out "accuracy" if it has one, else
    "valid_loss"; never for a run whose val accuracy is at chance (`at_chance`, see `chance_margin`)."""
    higher_is_better = "accuracy" in history
    values = history["accuracy" if higher_is_better else "valid_loss"]
    if len(values) < 2 or at_chance:
        return False
    back = max(1, len(values) // 4)
    before, last = values[:-back], values[-back:]
    if higher_is_better:
        return 100 * (max(last) - max(before)) < 1
    fall = min(before) - min(last)
    return fall <= 0 or fall < 0.01 * min(before)  # no division: a held-out loss can reach 0


def training(epochs: dict, steps: dict, seconds: dict, history: dict, at_chance: bool = False) -> dict:
    """Each phase of a run ({phase: epochs}, optimiser steps, wall seconds, per-epoch history) as one record with
    its plateau verdict (none plateaued for a run `at_chance` on val): {phase: {"epochs", "steps", "seconds",
    "plateaued"}}."""
    return {phase: {"epochs": epochs[phase], "steps": steps[phase], "seconds": seconds[phase],
                    "plateaued": plateaued(history[phase], at_chance)} for phase in epochs}


def training_line(record: dict) -> str:
    """A run's phases in one line: "pretrain 8 ep, 320 steps, 41 s, plateaued: no; probe ..."."""
    return "; ".join(f"{phase} {t['epochs']} ep, {t['steps']} steps, {t['seconds']:.0f} s, plateaued: "
                     f"{'yes' if t['plateaued'] else 'no'}" for phase, t in record.get("training", {}).items())


def weighted_mse(per_level: list[float], weights: list[float]) -> float:
    """The loss (Eq. 2) from its per-level terms."""
    return sum(w * v for w, v in zip(weights, per_level)) / sum(weights)


def left_of_mean_target(record: dict) -> float:
    """A pretrained run's held-out loss as a share of the mean target's (Study.pretrain_and_probe records both):
    1.0 is a student whose predictions are no closer to its targets than that constant, 0.0 one that predicts its
    targets exactly."""
    held_out = record["held_out_mse"]
    return (weighted_mse(held_out["student"], held_out["weights"])
            / weighted_mse(held_out["mean_target"], held_out["weights"]))


def held_out_table(runs: dict[str, dict]) -> str:
    """Each pretrained run's held-out MSE per level beside the mean target's (the loss of a student that ignores
    its image), and the weighted loss as a share of the mean target's."""
    rows = []
    for name, record in runs.items():
        held_out = record["held_out_mse"]
        rows.append([name] + [f"{s:.4f} / {m:.4f}" for s, m in zip(held_out["student"], held_out["mean_target"])]
                    + [f"{left_of_mean_target(record):.0%}"])
    levels = len(next(iter(runs.values()))["held_out_mse"]["student"])
    return markdown_table(["run"] + [f"level {k}: student / mean target" for k in range(levels)]
                          + ["loss, share of the mean target's"], rows)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


MEASURED_HEADER = ["Accuracy (paper)", "Accuracy, val folder", "Accuracy, 20% of train", "Source"]


def paper_table(name: str, metrics: dict[str, dict], paper: dict) -> str:
    """One of the paper's tables in its layout: each paper row, then the measured runs that stand for it, each
    run's repeats over seeds pooled into one row (mean ± standard deviation, and their number).

    A run stands for a paper row when its metrics file says so: `paper_rows[name]` is the row's id in
    reported_in_paper.json (e.g. "without cropping" in table1), and `cells` holds the run's own values for the
    table's columns.
    """
    table = paper["tables"][name]
    columns = list(table["columns"])
    rows = []
    for reported in table["rows"]:
        rows.append([reported[c] for c in columns] + [f"{reported['accuracy']:.2f}%", "", "", paper["source"]])
        for records in replicates(metrics):
            if records[0].get("paper_rows", {}).get(name) == reported["id"]:
                cells = [records[0]["cells"].get(c, "") for c in columns]
                rows.append(cells + [""] + accuracy_cells(records) + [source_of(*records)])
    return f"**{table['title']}**\n\n" + markdown_table(list(table["columns"].values()) + MEASURED_HEADER, rows)
