import pytest

from partwhole import miniature
from partwhole.results import write_metrics

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
    assert "350 s" in rows["time: the eight notebooks"] and "**missed**" in rows["time: the eight notebooks"]
    beats = rows["distillation beats no pretraining (val)"]
    assert "80.0% vs 12.0%" in beats and "n=3" in beats and beats.endswith("| met |")
    assert "0.80 ± 0.02 (n=3)" in rows["distillation / teacher ceiling (val)"]
    main = rows["distillation (main run)"]
    assert main == "| distillation (main run) | 80.0 ± 2.0% (n=3) | 80.0 ± 0.0% (n=3) | 50.0 ± 0.0% (n=3) |"


def test_a_spread_that_swallows_the_gap_misses_the_effect_goal(tmp_path):
    write_seeds(tmp_path, miniature.MAIN, [0.30, 0.60, 0.20])
    write_seeds(tmp_path, miniature.NONE, [0.10, 0.40, 0.12])
    text = miniature.report(tmp_path, {})
    assert "| distillation beats no pretraining (val) | ≥ 3 pooled SD |" in text
    assert next(l for l in text.splitlines() if "beats no pretraining" in l).endswith("**missed** |")


@pytest.mark.parametrize("values, shown", [([0.5], "50.0%"), ([0.5, 0.7], "60.0 ± 14.1% (n=2)")])
def test_show_gives_one_value_plainly_and_repeats_with_their_spread(values, shown):
    assert miniature.show(values) == shown
