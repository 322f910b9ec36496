"""The miniature report: what one run of the study (or its repeats over seeds) shows, goal by goal.

Each figure is read from the study's own metrics files and set beside its target; figures over several seeds are
mean ± sample standard deviation (n seeds) and where a further seed should land (results.mean_and_spread). The
runner writes it to results/<profile>/miniature.md after the notebooks, with the seconds each notebook took.
Nothing here is asserted: a missed goal is reported as missed.
"""
from pathlib import Path

import numpy as np

from ..core.artefacts import atomic_write
from ..datasets.synthetic import SHARED_PART_PAIRS
from ..study.results import (PLATEAU_RULE, chance_margin, left_of_mean_target, markdown_table, mean_and_spread,
                             read_metrics, replicates, source_of, spread)

MAIN, NONE, CEILING = "pretrained-crop_none", "no_pretraining", "control-teacher_ceiling"
SIGNED = (-1.0, 1.0)  # where a difference of two accuracies, a cosine or an ARI can lie
DOUBLED = f"{MAIN}-twice_the_epochs"  # notebook 03's plateau check
EQUAL_WEIGHTS = f"{MAIN}-level_weights_1_1_1"  # notebook 04's ablation of the paper's level weights
BAG, POSITIONAL_BAG = "control-bag_of_parts", "control-positional_bag_of_parts"
# on a 2-core CPU: one seed's eight notebooks in a quarter of an hour, any one notebook short enough for a class to
# run it live, and `make seeds` (five seeds and the tables) in an hour
SEED_LIMIT_S, NOTEBOOK_LIMIT_S, SEEDS_LIMIT_S = 900, 300, 3600
METHODS = {  # run: what it is, in the order the report lists them
    MAIN: "distillation (main run)",
    DOUBLED: "distillation, twice the pretraining epochs (plateau check)",
    "pretrained-crop_bbox": "distillation, masks cropped (Table 1)",
    "pretrained-crop_none-levels_encoder": "distillation, levels encoder (Table 2)",
    EQUAL_WEIGHTS: "distillation, equal level weights (the paper's: 0.1, 0.2, 0.7)",
    "supcon-ours": "supervised contrastive (Table 3)",
    NONE: "no pretraining (Table 3's None)",
    BAG: "bag of parts, position-free: probe on the mean box-cropped subpart target",
    POSITIONAL_BAG: "bag of parts with positions: probe on the mean full-frame subpart target",
    CEILING: "teacher ceiling: probe on the embedder's features",
    "pretrained-control-random_embedder": "control: random embedder",
    "pretrained-control-no_masks": "control: no masks",
    "pretrained-control-shuffled_masks": "control: shuffled masks",
}


def pair_accuracy(record: dict, pair: tuple[str, str]) -> float | None:
    """Val accuracy on the images of two classes: the mean of their per-class accuracies (val is balanced)."""
    by_class = record["accuracy"].get("val_by_class")
    if by_class is None or not set(pair) <= set(record.get("classes", ())):
        return None
    return float(np.mean([by_class[record["classes"].index(name)] for name in pair]))


def pair_confusion(record: dict, pair: tuple[str, str]) -> np.ndarray | None:
    """The pair's val confusion: rows the true class (pair[0], pair[1]), columns predicted pair[0], pair[1] or any
    other class; None where the run kept no confusion matrix."""
    confusion = record["accuracy"].get("val_confusion")
    if confusion is None or not set(pair) <= set(record.get("classes", ())):
        return None
    confusion = np.asarray(confusion)
    rows = confusion[[record["classes"].index(name) for name in pair]]
    inside = rows[:, [record["classes"].index(name) for name in pair]]
    return np.column_stack([inside, rows.sum(axis=1) - inside.sum(axis=1)])


def within_pair(record: dict, pair: tuple[str, str]) -> float | None:
    """Discrimination within the pair: of the pair's val images predicted as one of its two classes, the share given
    the right one (0.5 is a coin toss)."""
    confusion = pair_confusion(record, pair)
    if confusion is None or not confusion[:, :2].sum():
        return None
    return float(np.trace(confusion[:, :2]) / confusion[:, :2].sum())


def goal_rows(runs: dict[str, list[dict]], notebook_seconds: dict) -> list[list[str]]:
    rows = []

    def add(goal, target, measured, met):
        rows.append([goal, target, measured, {True: "met", False: "**missed**", None: "reported"}[met]])

    notebooks = {k: v for k, v in notebook_seconds.items() if "/" not in k}
    if notebooks:
        total = sum(notebooks.values())
        add("time: one seed's eight notebooks", f"≤ {SEED_LIMIT_S} s",
            f"{total:.0f} s ({total / SEED_LIMIT_S:.1f}x the target)", total <= SEED_LIMIT_S)
        longest = max(notebook_seconds, key=notebook_seconds.get)
        add("time: the longest notebook", f"≤ {NOTEBOOK_LIMIT_S} s",
            f"{notebook_seconds[longest]:.0f} s ({longest.removesuffix('.ipynb')})",
            notebook_seconds[longest] <= NOTEBOOK_LIMIT_S)
        if len(notebooks) < len(notebook_seconds):  # further seeds ran
            every = sum(notebook_seconds.values())
            add("time: every seed's notebooks and the tables (make seeds)", f"≤ {SEEDS_LIMIT_S // 60} min",
                f"{every / 60:.0f} min ({every / SEEDS_LIMIT_S:.1f}x the target)", every <= SEEDS_LIMIT_S)
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
    if MAIN in val and DOUBLED in val:
        gain = [doubled - main for doubled, main in zip(val[DOUBLED], val[MAIN])]
        add("distillation at its plateau: twice the pretraining epochs gains (val)", "< 1 point",
            mean_and_spread(gain, unit=" points", bounds=SIGNED), spread(gain)[0] < 0.01)
    if MAIN in val and CEILING in val:
        ceiling = spread(val[CEILING])[0]
        share = [m / c for m, c in zip(val[MAIN], val[CEILING]) if c]
        if share:
            add("distillation / teacher ceiling (val)", "≥ 0.7",
                mean_and_spread(share, 1, "", 2, bounds=(0.0, np.inf)), spread(share)[0] >= 0.7)
        add("teacher ceiling (val)", "≥ 80%", mean_and_spread(val[CEILING]), ceiling >= 0.8)
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
        rows.append(["targets' subpart vs whole cosine at object points", "well below 0.9",
                     mean_and_spread(cosine, 1, "", 3, bounds=SIGNED),
                     "met" if mean < 0.8 else "**missed**"])
    islands = runs.get("islands", [])
    if islands:
        student = next(name for name in islands[0]["islands"] if name.endswith("pre-training"))
        students = {student: "student", f"{student}, equal level weights": "equal-weights student"}
        for name, what in students.items():
            if name not in islands[0]["islands"]:
                continue
            ari = np.array([r["islands"][name]["ari"] for r in islands])  # (seeds, levels)
            rows.append([f"{what}'s top-level islands: ARI with the teacher's wholes", "≥ 0.7",
                         mean_and_spread(ari[:, -1], 1, "", 2, bounds=SIGNED),
                         "met" if ari[:, -1].mean() >= 0.7 else "**missed**"])
            mean = ari.mean(axis=0)
            random_init = np.mean([r["islands"]["no pretraining"]["ari"] for r in islands], axis=0)
            rows.append([f"{what}'s islands: ARI per level (subpart / part / whole) against a random init's",
                         "above at every level", " / ".join(f"{a:.2f} vs {r:.2f}" for a, r in zip(mean, random_init)),
                         "met" if (mean > random_init).all() else "**missed**"])
    return rows


def method_names(runs: dict[str, list[dict]]) -> dict[str, str]:
    """{run: what it is}: the fixed methods, then every XResNet row of the results folder."""
    names = {run: name for run, name in METHODS.items() if run in runs}
    for run, records in runs.items():
        if "architecture" in records[0]:
            names[run] = f"{records[0]['architecture']['name']} from scratch, {records[0]['cells']['size_px']} px (Table 4)"
    return names


def training_cells(records: list[dict]) -> list[str]:
    """Epochs, optimiser steps, seconds and plateau verdict of each phase of a run (seconds: mean over seeds)."""
    phases = records[0].get("training", {})
    if not phases:
        return ["", "", "", ""]
    def each(key, fmt):
        return " + ".join(fmt(np.mean([r["training"][p][key] for r in records])) for p in phases)
    verdicts = " + ".join("yes" if all(r["training"][p]["plateaued"] for r in records) else
                          "no" if not any(r["training"][p]["plateaued"] for r in records) else "some seeds"
                          for p in phases)
    return [" + ".join(f"{p} {phases[p]['epochs']}" for p in phases), each("steps", lambda v: f"{v:.0f}"),
            each("seconds", lambda v: f"{v:.0f}"), verdicts]


def method_rows(runs: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    for run, name in method_names(runs).items():
        records = runs[run]
        val = [r["accuracy"]["val"] for r in records]
        confusion = records[0]["accuracy"].get("val_confusion")  # its sum: the number of val images
        at_chance = confusion is not None and spread(val)[0] < chance_margin(len(confusion), int(np.sum(confusion)))
        chance = " (at chance)" if at_chance else ""
        left = [left_of_mean_target(r) for r in records if "held_out_mse" in r]
        rows.append([name, mean_and_spread(val) + chance, *training_cells(records),
                     f"{100 * np.mean(left):.0f}%" if left else ""])
    return rows


def pair_rows(runs: dict[str, list[dict]]) -> list[list[str]]:
    """Per method and shared-part pair: its ten-way accuracy on the pair's images, the within-pair discrimination,
    and the pair's confusion (summed over seeds)."""
    rows = []
    for run, name in method_names(runs).items():
        records = runs[run]
        cells = []
        for pair in SHARED_PART_PAIRS:
            confusion = [pair_confusion(r, pair) for r in records]
            if confusion[0] is None:
                cells += ["", "", ""]
                continue
            total = sum(confusion)
            shown = "; ".join(f"{a}: {row[0]} / {row[1]} / {row[2]}" for a, row in zip(pair, total))
            ten_way = [pair_accuracy(r, pair) for r in records]
            within = [within_pair(r, pair) for r in records]
            cells += [mean_and_spread(ten_way) if None not in ten_way else "",
                      mean_and_spread(within) if None not in within else "", shown]
        if any(cells):
            rows.append([name] + cells)
    return rows


def efficiency_rows(runs: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """The data-efficiency table: one row per labelled share, each method's val accuracy (over seeds), steps and
    plateau verdict."""
    records = runs.get("data_efficiency", [])
    if not records:
        return [], []
    methods = list(records[0]["curves"])
    shares = sorted({f for r in records for curve in r["curves"].values() for f in curve}, key=float)
    rows = []
    for share in shares:
        row = [f"{100 * float(share):g}%"]
        images = next((c[share]["images"] for c in records[0]["curves"].values() if share in c), "")
        row.append(images)
        for method in methods:
            points = [r["curves"][method][share] for r in records if share in r["curves"].get(method, {})]
            if not points:
                row.append("")
                continue
            verdict = "plateaued" if all(p["plateaued"] for p in points) else "not plateaued"
            row.append(f"{mean_and_spread([p['val'] for p in points])}, {points[0]['steps']} steps, {verdict}")
        rows.append(row)
    return ["labelled share", "images"] + methods, rows


def report(results_dir: Path, notebook_seconds: dict, seeds=None) -> str:
    """The miniature report of a profile's results folder, as markdown: the first seed and the further `seeds`
    (None: every seed folder)."""
    metrics = read_metrics(results_dir, seeds)
    every = repeats(metrics)
    runs = {run: records for run, records in every.items() if "accuracy" in records[0]}
    sources = {source_of(*records) for run, records in runs.items() if run == MAIN}
    lines = [f"# The {next(iter(metrics.values()))['profile']} study in miniature", "",
             f"Source: {', '.join(sorted(sources)) or 'no main run yet'}. Figures over seeds are mean ± sample "
             "standard deviation (n seeds; next seed: the 95% prediction interval of one further seed, Student's t, "
             "within 0-100% for accuracies); every random source of a run (scenes, student initialisation, data "
             "order) follows its seed, the embedder's weights are shipped (as MaxViT's are given).", "",
             "## Goals", "",
             markdown_table(["Goal", "Target", "Measured", "Verdict"], goal_rows(runs, notebook_seconds)
                            + level_rows(every)), "",
             "## Every method: val accuracy and training", "",
             f"Plateau rule: {PLATEAU_RULE}. Chance is one in the number of classes; an accuracy within two "
             "binomial standard deviations of it on the val folder is marked at chance. A distillation run's "
             "held-out loss is also given as a share of the mean target's (the loss of a student that ignores its "
             "image): near 100%, its predictions are no closer to its targets than that constant.", "",
             markdown_table(["Method", "Val (ten classes)", "Epochs", "Steps", "Seconds", "Plateaued",
                             "Held-out loss, share of the mean target's"],
                            method_rows(runs)), "",
             "## The classes that share their parts", "",
             "Each pair's two classes are made of the same parts and differ only in their arrangement. For each "
             "method: its ten-way accuracy on the pair's val images; within the pair, of the pair's images it "
             "predicted as one of the two classes, the share given the right one (0.5 is a coin toss); and the "
             "pair's confusion, per true class: predicted first / second / another class (summed over seeds). The "
             "position-free bag of parts averages the box-cropped subpart targets (which parts, not where); the "
             "positional one averages the full-frame targets, which keep where each subpart lies.", "",
             markdown_table(["Method"] + [f"{' vs '.join(pair)}: {what}" for pair in SHARED_PART_PAIRS
                                          for what in ("ten-way", "within the pair", "confusion")],
                            pair_rows(runs)) if pair_rows(runs) else "No run kept its val confusion.", ""]
    header, rows = efficiency_rows(every)
    if rows:
        lines += ["## Data efficiency: val accuracy against the labelled share of the fit set", "",
                  "The same seeded, class-balanced subsets for every method. Distillation pretrains without labels "
                  "on every fit image and only its probe sees the subset; SupCon's pretraining and classifier both "
                  "see it; XResNet trains from scratch on it. Each subset is repeated to the fit set's length, so "
                  "every point of a method runs as many optimiser steps as its 100% run.", "", markdown_table(header, rows), ""]
    orderings = [("without cropping", MAIN, "with cropping", "pretrained-crop_bbox"),
                 ("levels encoder removed", MAIN, "included", "pretrained-crop_none-levels_encoder"),
                 ("the paper's level weights", MAIN, "equal level weights", EQUAL_WEIGHTS),
                 ("distillation", MAIN, "supervised contrastive", "supcon-ours"),
                 ("supervised contrastive", "supcon-ours", "no pretraining", NONE)]
    ordering_rows = []
    for first_name, first, second_name, second in orderings:
        if first in runs and second in runs:
            a, b = ([r["accuracy"]["val"] for r in runs[run]] for run in (first, second))
            difference = [x - y for x, y in zip(a, b)]
            ordering_rows.append([f"{first_name} − {second_name}",
                                  mean_and_spread(difference, unit=" points", bounds=SIGNED)])
    if ordering_rows:
        lines += ["## The paper's orderings (val accuracy, differences per seed)", "",
                  markdown_table(["Comparison", "Difference"], ordering_rows), ""]
    if notebook_seconds:
        seconds = [[name, f"{s:.0f}"] for name, s in notebook_seconds.items()]
        lines += ["## Seconds per notebook", "", markdown_table(["Notebook", "Seconds"], seconds), ""]
    return "\n".join(lines)


def write_report(results_dir: Path, notebook_seconds: dict, seeds=None) -> Path:
    path = Path(results_dir) / "miniature.md"
    text = report(results_dir, notebook_seconds, seeds)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path
