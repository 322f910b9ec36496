import json
from pathlib import Path

import numpy as np
import pytest

from partwhole.analysis import miniature
from partwhole.study.results import write_metrics

CLASSES = ["face", "scrambled_face", "row", "tower", "other"]
SETTINGS = {"name": "embedded", "seed": 0}


def record(run, val, seed, by_class=None, **fields):
    accuracy = {"val": val, "holdout": val} | ({"val_by_class": by_class} if by_class else {})
    return {"run": run, "profile": "embedded", "device": "CPU", "seed": seed, "git_commit": "abc",
            "settings": SETTINGS | {"seed": seed}, "accuracy": accuracy, "classes": CLASSES} | fields


def write_seeds(folder, run, values, **fields):
    for k, value in enumerate(values):
        seed = 42 + k
        where = folder if k == 0 else folder / "seeds" / f"seed_{seed}"
        write_metrics(where, run, {k: v for k, v in record(run, value, seed, **fields).items() if k != "run"})


def test_goals_are_computed_from_the_seeds_and_judged_against_their_targets(tmp_path):
    write_seeds(tmp_path, miniature.MAIN, [0.80, 0.82, 0.78], by_class=[0.9, 0.7, 0.6, 0.4, 1.0])
    write_seeds(tmp_path, miniature.NONE, [0.12, 0.14, 0.10])
    write_seeds(tmp_path, miniature.CEILING, [1.0, 1.0, 1.0])
    text = miniature.report(tmp_path, {"01_teacher_masks.ipynb": 200.0, "02_mask_embeddings.ipynb": 150.0,
                                       "seed_43/02_mask_embeddings.ipynb": 150.0})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["time: one seed's eight notebooks"].endswith("| ≤ 900 s | 350 s (0.4x the target) | met |")
    assert rows["time: the longest notebook"].endswith("| ≤ 300 s | 200 s (01_teacher_masks) | met |")
    assert rows["time: every seed's notebooks and the tables (make seeds)"].endswith("| 8 min (0.1x the target) | met |")
    slow = miniature.report(tmp_path, {"01_teacher_masks.ipynb": 200.0, "05_baselines.ipynb": 750.0})
    assert "| time: the longest notebook | ≤ 300 s | 750 s (05_baselines) | **missed** |" in slow
    assert "| time: one seed's eight notebooks | ≤ 900 s | 950 s (1.1x the target) | **missed** |" in slow
    assert "make seeds" not in slow  # one seed only
    beats = rows["distillation beats no pretraining (val)"]
    assert "80.0% vs 12.0%" in beats and "n=3" in beats and beats.endswith("| met |")
    assert "0.80 ± 0.02 (n=3; next seed" in rows["distillation / teacher ceiling (val)"]
    main = rows["distillation (main run)"]
    assert main == "| distillation (main run) | 80.0 ± 2.0% (n=3; next seed 70.1 to 89.9%) |  |  |  |  |  |"


def test_a_spread_that_swallows_the_gap_misses_the_effect_goal(tmp_path):
    write_seeds(tmp_path, miniature.MAIN, [0.30, 0.60, 0.20])
    write_seeds(tmp_path, miniature.NONE, [0.10, 0.40, 0.12])
    text = miniature.report(tmp_path, {})
    assert "| distillation beats no pretraining (val) | ≥ 3 pooled SD |" in text
    assert next(l for l in text.splitlines() if "beats no pretraining" in l).endswith("**missed** |")


def test_a_differences_interval_stays_within_its_possible_range(tmp_path):
    # two seeds far apart: t(1) = 12.7 would put the next seed's difference beyond ±100 points
    write_seeds(tmp_path, "supcon-ours", [0.90, 0.20])
    write_seeds(tmp_path, miniature.NONE, [0.10, 0.10])
    write_seeds(tmp_path, miniature.MAIN, [0.90, 0.20])
    write_seeds(tmp_path, miniature.CEILING, [1.0, 0.5])
    text = miniature.report(tmp_path, {})
    difference = next(l for l in text.splitlines() if l.startswith("| supervised contrastive − no pretraining |"))
    assert "next seed -100.0 to 100.0 points" in difference
    share = next(l for l in text.splitlines() if l.startswith("| distillation / teacher ceiling (val) |"))
    assert "next seed 0.00 to " in share  # a ratio of accuracies is not negative


def test_pairs_are_judged_within_the_pair_from_the_confusion(tmp_path):
    # face: 6 right, 2 called scrambled_face, 2 elsewhere; scrambled_face: 1 called face, 9 right
    confusion = [[6, 2, 0, 0, 2], [1, 9, 0, 0, 0], [0, 0, 10, 0, 0], [0, 0, 10, 0, 0], [0, 0, 0, 0, 10]]
    accuracy = {"val": 0.7, "holdout": 0.7, "val_by_class": [0.6, 0.9, 1.0, 0.0, 1.0], "val_confusion": confusion}
    data = record(miniature.MAIN, 0.7, 42) | {"accuracy": accuracy}
    pair = ("face", "scrambled_face")
    assert miniature.pair_confusion(data, pair).tolist() == [[6, 2, 2], [1, 9, 0]]
    assert miniature.within_pair(data, pair) == 15 / 18
    assert miniature.within_pair(data, ("row", "tower")) == 0.5  # all called row: a coin toss
    assert miniature.pair_confusion(record(miniature.MAIN, 0.7, 42), pair) is None  # no confusion kept


def test_each_method_shows_its_training_and_whether_it_is_at_chance(tmp_path):
    training = {"pretrain": {"epochs": 8, "steps": 320, "seconds": 40.0, "plateaued": False},
                "probe": {"epochs": 30, "steps": 1200, "seconds": 5.0, "plateaued": True}}
    confusion = (np.eye(5, dtype=int) * 20).tolist()
    held_out = {"student": [0.1, 0.2, 0.3], "mean_target": [0.4, 0.4, 0.4], "weights": [1, 1, 1]}
    write_seeds(tmp_path, miniature.MAIN, [0.8], training=training, held_out_mse=held_out)
    write_seeds(tmp_path, "supcon-ours", [0.21], training=training)
    for run in (miniature.MAIN, "supcon-ours"):
        path = tmp_path / "metrics" / f"{run}.json"
        data = json.loads(path.read_text())
        data["accuracy"]["val_confusion"] = confusion  # 5 classes, 100 images: chance margin 28%
        path.write_text(json.dumps(data))
    text = miniature.report(tmp_path, {})
    assert "| distillation (main run) | 80.0% | pretrain 8 + probe 30 | 320 + 1200 | 40 + 5 | no + yes | 50% |" in text
    assert "| supervised contrastive (Table 3) | 21.0% (at chance) |" in text


def test_islands_are_judged_at_the_top_level_and_against_a_random_init_at_every_level(tmp_path):
    student = "ground-truth teacher pre-training"
    scores = (([0.10, 0.20, 0.60], [0.30, 0.25, 0.72]), ([0.14, 0.22, 0.64], [0.28, 0.23, 0.70]))  # main, equal
    for k, (main, equal) in enumerate(scores):
        seed = 42 + k
        islands = {student: {"ari": main}, f"{student}, equal level weights": {"ari": equal},
                   "no pretraining": {"ari": [0.25, 0.16, 0.03]}}
        where = tmp_path if k == 0 else tmp_path / "seeds" / f"seed_{seed}"
        write_metrics(where, "islands", {"profile": "embedded", "device": "CPU", "seed": seed, "git_commit": "abc",
                                         "settings": SETTINGS | {"seed": seed}, "islands": islands})
    write_seeds(tmp_path, miniature.MAIN, [0.8, 0.8])
    rows = {line.split(" | ")[0].strip("| "): line for line in miniature.report(tmp_path, {}).splitlines()}
    top = rows["student's top-level islands: ARI with the teacher's wholes"]
    assert "0.62 ± 0.03 (n=2; next seed" in top and top.endswith("**missed** |")
    levels = rows["student's islands: ARI per level (subpart / part / whole) against a random init's"]
    assert "0.12 vs 0.25 / 0.21 vs 0.16 / 0.62 vs 0.03" in levels and levels.endswith("**missed** |")
    assert rows["equal-weights student's top-level islands: ARI with the teacher's wholes"].endswith("| met |")
    equal = rows["equal-weights student's islands: ARI per level (subpart / part / whole) against a random init's"]
    assert equal.endswith("| met |")


ROOT = Path(__file__).resolve().parents[1]
SECTION = "## The embedded study in miniature"
# where the report's rows are quoted: the README's findings and the report's own page, each a section
QUOTED = {"README.md": "## What the study found", "docs/report.md": "# The embedded study in miniature"}


def quoted_rows(readme: str, section: str = SECTION) -> list[str]:
    """The table rows (not the header separators) of a markdown file's section."""
    text = readme.split(section, 1)[1].split("\n## ", 1)[0]
    return [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]


@pytest.mark.parametrize("name", QUOTED)
def test_the_docs_quote_the_committed_report_row_for_row(name):
    # the tables of the findings are copied from results/embedded/miniature.md, never retyped
    report = set((ROOT / "results" / "embedded" / "miniature.md").read_text().splitlines())
    rows = quoted_rows((ROOT / name).read_text(), QUOTED[name])
    assert len(rows) >= 8
    assert [row for row in rows if row not in report] == []


def test_the_quoted_rows_are_the_table_rows_of_that_section_alone():
    readme = f"{SECTION}\n\n| Goal | Target |\n|---|---|\n| time | 12 s |\n\n## Next\n\n| outside | 1 |\n"
    assert quoted_rows(readme) == ["| Goal | Target |", "| time | 12 s |"]
