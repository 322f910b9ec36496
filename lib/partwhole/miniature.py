"""The miniature report: what one run of the study (or its repeats over seeds) shows, goal by goal.

Each figure is read from the study's own metrics files and set beside its target; figures over several seeds are
mean ± sample standard deviation (n seeds). The runner writes it to results/<profile>/miniature.md after the
notebooks, with the seconds each notebook took. Nothing here is asserted: a missed goal is reported as missed.
"""
from pathlib import Path

import numpy as np

from .artefacts import atomic_write
from .results import markdown_table, read_metrics, replicates, source_of
from .synthetic import SHARED_PART_PAIRS

MAIN, NONE, CEILING, BAG = "pretrained-crop_none", "no_pretraining", "control-teacher_ceiling", "control-bag_of_parts"
TIME_LIMIT_S = 300  # the eight notebooks on a 2-core CPU
METHODS = {  # run: what it is, in the order the report lists them
    MAIN: "distillation (main run)",
    "pretrained-crop_bbox": "distillation, masks cropped (Table 1)",
    "pretrained-crop_none-levels_encoder": "distillation, levels encoder (Table 2)",
    "supcon-ours": "supervised contrastive (Table 3)",
    NONE: "no pretraining (Table 3's None)",
    BAG: "bag of parts: probe on the mean subpart target",
    CEILING: "teacher ceiling: probe on the embedder's features",
    "pretrained-control-random_embedder": "control: random embedder",
    "pretrained-control-no_masks": "control: no masks",
    "pretrained-control-shuffled_masks": "control: shuffled masks",
}


def spread(values) -> tuple[float, float, int]:
    """mean, sample standard deviation (0 for one value) and count."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)


def show(values, scale: float = 100, unit: str = "%", digits: int = 1) -> str:
    mean, sd, n = spread(values)
    if n == 1:
        return f"{scale * mean:.{digits}f}{unit}"
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}{unit} (n={n})"


def pair_accuracy(record: dict, pair: tuple[str, str]) -> float | None:
    """Val accuracy on the images of two classes: the mean of their per-class accuracies (val is balanced)."""
    by_class = record["accuracy"].get("val_by_class")
    if by_class is None or not set(pair) <= set(record.get("classes", ())):
        return None
    return float(np.mean([by_class[record["classes"].index(name)] for name in pair]))


def goal_rows(runs: dict[str, list[dict]], notebook_seconds: dict) -> list[list[str]]:
    rows = []

    def add(goal, target, measured, met):
        rows.append([goal, target, measured, {True: "met", False: "**missed**", None: "reported"}[met]])

    notebooks = {k: v for k, v in notebook_seconds.items() if "/" not in k}
    if notebooks:
        total = sum(notebooks.values())
        add("time: the eight notebooks", f"≤ {TIME_LIMIT_S} s", f"{total:.0f} s", total <= TIME_LIMIT_S)
    val = {run: [r["accuracy"]["val"] for r in records] for run, records in runs.items()}
    if MAIN in val and NONE in val:
        (main, main_sd, n), (none, none_sd, _) = spread(val[MAIN]), spread(val[NONE])
        pooled = np.sqrt((main_sd ** 2 + none_sd ** 2) / 2)
        gap = f"{100 * main:.1f}% vs {100 * none:.1f}%: {100 * (main - none):.1f} points"
        if n > 1:
            add("distillation beats no pretraining (val)", "≥ 3 pooled SD",
                f"{gap} = {(main - none) / pooled:.1f} pooled SD (n={n})", bool(main - none >= 3 * pooled))
        else:
            add("distillation beats no pretraining (val)", "≥ 3 pooled SD", f"{gap} (one seed: no spread)", None)
    if MAIN in val and CEILING in val:
        ceiling = spread(val[CEILING])[0]
        share = [m / c for m, c in zip(val[MAIN], val[CEILING]) if c]
        if share:
            add("distillation / teacher ceiling (val)", "≥ 0.7", show(share, 1, "", 2), spread(share)[0] >= 0.7)
        add("teacher ceiling (val)", "≥ 80%", show(val[CEILING]), ceiling >= 0.8)
    return rows


def repeats(metrics: dict) -> dict[str, list[dict]]:
    """{run: its repeats over seeds}: for each run of this results folder (metrics/), the records of every seed made
    with the same settings (an older group of seeds with other settings is left out)."""
    return {records[0]["run"]: records for records in replicates(metrics)
            if any(r is metrics.get(r["run"]) for r in records)}


def level_rows(runs: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    teacher = runs.get("teacher_statistics", [])
    if teacher:
        stats = teacher[0]
        areas = " / ".join(f"{a:.2f}" for a in stats["mean_area_per_level"])
        rows.append(["mean mask area per level (subpart / part / whole)", "levels differ", areas, "reported"])
        share = stats["levels_0_and_2_differ"]
        rows.append(["points whose subpart and whole masks differ", "most points", f"{100 * share:.1f}%",
                     "met" if share > 0.5 else "**missed**"])
    levels = runs.get("target_levels", [])
    if levels:
        cosine = [r["cosine_0_2"]["object points"] for r in levels]
        mean = spread(cosine)[0]
        rows.append(["targets' subpart vs whole cosine at object points", "well below 0.9", show(cosine, 1, "", 3),
                     "met" if mean < 0.8 else "**missed**"])
    islands = runs.get("islands", [])
    if islands:
        student = next(name for name in islands[0]["islands"] if name.endswith("pre-training"))
        ari = [r["islands"][student]["ari"][-1] for r in islands]
        rows.append(["student's top-level islands: ARI with the teacher's wholes", "≥ 0.7", show(ari, 1, "", 2),
                     "met" if spread(ari)[0] >= 0.7 else "**missed**"])
    return rows


def method_rows(runs: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    for run, name in METHODS.items():
        if run in runs:
            records = runs[run]
            pairs = [show([pair_accuracy(r, pair) for r in records]) if pair_accuracy(records[0], pair) is not None
                     else "" for pair in SHARED_PART_PAIRS]
            rows.append([name, show([r["accuracy"]["val"] for r in records]), *pairs])
    return rows


def report(results_dir: Path, notebook_seconds: dict) -> str:
    """The miniature report of a profile's results folder, as markdown."""
    metrics = read_metrics(results_dir)
    every = repeats(metrics)
    runs = {run: records for run, records in every.items() if "accuracy" in records[0]}
    sources = {source_of(*records) for run, records in runs.items() if run == MAIN}
    lines = [f"# The {next(iter(metrics.values()))['profile']} study in miniature", "",
             f"Source: {', '.join(sorted(sources)) or 'no main run yet'}. Figures over seeds are mean ± sample "
             "standard deviation; every random source of a run (scenes, student initialisation, data order) follows "
             "its seed, the embedder's weights are shipped (as MaxViT's are given).", "",
             "## Goals", "",
             markdown_table(["Goal", "Target", "Measured", "Verdict"], goal_rows(runs, notebook_seconds)
                            + level_rows(every)), "",
             "## Accuracy on val, and on the classes that share their parts", "",
             "Each pair's two classes are made of the same parts and differ only in their arrangement: a bag of "
             "parts cannot tell them apart, a model of the part-whole hierarchy can.", "",
             markdown_table(["Method", "All ten classes"] + [" vs ".join(pair) for pair in SHARED_PART_PAIRS],
                            method_rows(runs)), ""]
    orderings = [("without cropping", MAIN, "with cropping", "pretrained-crop_bbox"),
                 ("levels encoder removed", MAIN, "included", "pretrained-crop_none-levels_encoder"),
                 ("distillation", MAIN, "supervised contrastive", "supcon-ours"),
                 ("supervised contrastive", "supcon-ours", "no pretraining", NONE)]
    ordering_rows = []
    for first_name, first, second_name, second in orderings:
        if first in runs and second in runs:
            a, b = ([r["accuracy"]["val"] for r in runs[run]] for run in (first, second))
            difference = [x - y for x, y in zip(a, b)]
            ordering_rows.append([f"{first_name} − {second_name}", show(difference, unit=" points")])
    if ordering_rows:
        lines += ["## The paper's orderings (val accuracy, differences per seed)", "",
                  markdown_table(["Comparison", "Difference"], ordering_rows), ""]
    if notebook_seconds:
        seconds = [[name, f"{s:.0f}"] for name, s in notebook_seconds.items()]
        lines += ["## Seconds per notebook", "", markdown_table(["Notebook", "Seconds"], seconds), ""]
    return "\n".join(lines)


def write_report(results_dir: Path, notebook_seconds: dict) -> Path:
    path = Path(results_dir) / "miniature.md"
    text = report(results_dir, notebook_seconds)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path
