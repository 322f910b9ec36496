import subprocess

import pytest

import numpy as np

from partwhole.study.results import (git_commit, markdown_table, mean_and_spread, paper_table, prediction_interval,
                                     read_metrics, reported_in_paper, write_metrics)

RECORD = {
    "run": "pretrained-crop_bbox", "settings": {"seed": 3, "pretrain_epochs": 10},
    "profile": "embedded", "device": "CPU", "seed": 3, "git_commit": "abc123",
    "accuracy": {"val": 0.5, "holdout": 0.25},
    "paper_rows": {"table1": "with cropping"},
    "cells": {"mask_strategy": "with cropping (measured)"},
}


def test_measured_row_stands_under_its_paper_row_with_provenance():
    paper = reported_in_paper()
    table = paper_table("table1", {"run": RECORD}, paper)
    lines = table.splitlines()
    paper_row = next(i for i, line in enumerate(lines) if line.startswith("| with cropping |"))
    assert "80.56%" in lines[paper_row] and "not measured here" in lines[paper_row]
    measured = lines[paper_row + 1]
    assert measured.startswith("| with cropping (measured) |")
    assert "50.00%" in measured and "25.00%" in measured
    assert "measured: embedded, CPU, seed 3, commit abc123" in measured
    assert table.count("measured:") == 1  # not repeated under the other row


def test_paper_numbers_are_all_four_tables():
    paper = reported_in_paper()
    assert list(paper["tables"]) == ["table1", "table2", "table3", "table4"]
    accuracies = [row["accuracy"] for table in paper["tables"].values() for row in table["rows"]]
    assert accuracies == [80.56, 89.5, 89.5, 91.2, 49.48, 58.6, 91.2, 87.43, 86.76, 86.85, 90.17, 91.28]


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def repeat(record: dict, seed: int, val: float, **settings) -> dict:
    return record | {"seed": seed, "settings": record["settings"] | {"seed": seed} | settings,
                     "accuracy": {"val": val, "holdout": val}}


def test_repeats_over_seeds_are_pooled_into_mean_and_standard_deviation(tmp_path):
    write_metrics(tmp_path, RECORD["run"], RECORD)
    for seed, val in ((4, 0.6), (5, 0.7)):
        write_metrics(tmp_path / "seeds" / f"seed_{seed}", RECORD["run"], repeat(RECORD, seed, val))
    table = paper_table("table1", read_metrics(tmp_path), reported_in_paper())
    measured = [line for line in table.splitlines() if "measured:" in line]
    assert len(measured) == 1
    assert "60.00 ± 10.00% (n=3; next seed 10.32 to 100.00%)" in measured[0]  # 0.5, 0.6, 0.7: sample SD; t(2) = 4.30
    assert "seeds 3, 4, 5" in measured[0]


def test_runs_with_other_settings_are_not_pooled():
    other = repeat(RECORD, 4, 0.9, pretrain_epochs=20)
    table = paper_table("table1", {"a": RECORD, "b": other}, reported_in_paper())
    measured = [line for line in table.splitlines() if "measured:" in line]
    assert len(measured) == 2 and "90.00%" in measured[1] and "(n=" not in table


def test_commit_is_dirty_when_code_changes_but_not_when_results_do(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for name in ("lib.py", "results/metrics.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    monkeypatch.setattr("partwhole.study.results.project_root", lambda: tmp_path)
    assert not git_commit().endswith("+dirty")
    (tmp_path / "results" / "metrics.json").write_text("2")  # a rerun over committed results
    assert not git_commit().endswith("+dirty")
    (tmp_path / "lib.py").write_text("2")
    assert git_commit().endswith("+dirty")


def test_the_plateau_rule_reads_the_last_quarter_of_the_held_out_metric():
    from partwhole.study.results import plateaued, training
    assert plateaued({"accuracy": [0.1, 0.5, 0.60, 0.605]})  # +0.5 points in the last quarter
    assert not plateaued({"accuracy": [0.1, 0.5, 0.60, 0.62]})  # +2 points
    assert not plateaued({"accuracy": [0.9]})  # one epoch: no evidence
    assert plateaued({"valid_loss": [1.0, 0.8, 0.70, 0.699], "train_loss": [0, 0, 0, 0]})
    assert not plateaued({"valid_loss": [1.0, 0.8, 0.70, 0.66]})
    assert plateaued({"valid_loss": [1.0, 0.8, 0.90, 0.95]})  # rising: no longer improving
    assert not plateaued({"valid_loss": [1.0, 0.8, 0.90, 0.95]}, at_chance=True)  # flat at chance: never learnt
    assert not plateaued({"accuracy": [0.1, 0.11, 0.1, 0.1]}, at_chance=True)
    # the thresholds themselves: 1 point of accuracy, 1% of the held-out loss, each tested on both sides
    assert plateaued({"accuracy": [0.1, 0.5, 0.600, 0.609]})  # +0.9 points
    assert not plateaued({"accuracy": [0.1, 0.5, 0.600, 0.615]})  # +1.5 points
    assert plateaued({"valid_loss": [1.0, 0.8, 0.700, 0.6937]})  # 0.9% lower
    assert not plateaued({"valid_loss": [1.0, 0.8, 0.700, 0.6923]})  # 1.1% lower
    assert not plateaued({"valid_loss": [1.0, 0.8, 0.700, 0.679]})  # 3% lower
    assert plateaued({"valid_loss": [1.0, 0.5, 0.0, 0.0]})  # at zero: it can fall no further
    record = training({"probe": 4}, {"probe": 40}, {"probe": 2.5}, {"probe": {"accuracy": [0.1, 0.5, 0.6, 0.62]}})
    assert record == {"probe": {"epochs": 4, "steps": 40, "seconds": 2.5, "plateaued": False}}
    flat = {"pretrain": {"valid_loss": [3.5, 3.4, 3.6, 3.7]}, "probe": {"accuracy": [0.1, 0.11, 0.11, 0.11]}}
    ones = {"pretrain": 1, "probe": 1}
    assert all(t["plateaued"] for t in training({"pretrain": 4, "probe": 4}, ones, ones, flat).values())
    assert not any(t["plateaued"] for t in training({"pretrain": 4, "probe": 4}, ones, ones, flat, True).values())


def test_a_comparison_says_when_an_accuracy_is_at_chance():
    from partwhole.study.results import chance_margin, compared_with
    assert abs(chance_margin(10, 300) - 0.1346) < 1e-3
    line = compared_with("SupCon", 0.12, "distillation", 0.80, 10, 300)
    assert line == "SupCon 12.0% (at chance: below 13.5%): 68.0 points below distillation 80.0%"
    assert "at chance" not in compared_with("SupCon", 0.5, "distillation", 0.80, 10, 300)


def test_the_held_out_loss_is_read_against_the_mean_targets():
    from partwhole.study.results import held_out_table, left_of_mean_target
    learnt = {"held_out_mse": {"student": [0.1, 0.2, 0.3], "mean_target": [0.2, 0.4, 0.6], "weights": [0.1, 0.2, 0.7]}}
    nothing = {"held_out_mse": {"student": [0.2, 0.4, 0.6], "mean_target": [0.2, 0.4, 0.6], "weights": [1, 1, 1]}}
    assert left_of_mean_target(learnt) == pytest.approx(0.5) and left_of_mean_target(nothing) == pytest.approx(1.0)
    table = held_out_table({"main": learnt, "no masks": nothing}).splitlines()
    assert table[2] == "| main | 0.1000 / 0.2000 | 0.2000 / 0.4000 | 0.3000 / 0.6000 | 50% |"
    assert table[3].endswith("| 100% |")


@pytest.mark.parametrize("values, shown", [
    ([0.5], "50.0%"),
    ([0.5, 0.7], "60.0 ± 14.1% (n=2; next seed 0.0 to 100.0%)"),
    ([0.80, 0.82, 0.78, 0.85, 0.79], "80.8 ± 2.8% (n=5; next seed 72.4 to 89.2%)"),
])
def test_one_value_is_shown_plainly_and_repeats_with_their_spread_and_the_next_seeds_range(values, shown):
    assert mean_and_spread(values) == shown


def test_differences_are_not_cut_to_the_range_of_an_accuracy():
    shown = mean_and_spread([-0.02, 0.01], unit=" points", bounds=None)
    assert shown == "-0.5 ± 2.1 points (n=2; next seed -33.5 to 32.5 points)"


def test_a_further_seed_lands_inside_the_prediction_interval_95_times_in_100():
    rng = np.random.default_rng(0)
    draws = rng.normal(0.0, 1.0, size=(4000, 6))  # five seeds and the next one, 4,000 times
    inside = [low <= next_seed <= high for *seeds, next_seed in draws
              for low, high in [prediction_interval(seeds, bounds=None)]]
    assert 0.94 <= np.mean(inside) <= 0.96  # mean ± 1 sample SD holds 58% of them
