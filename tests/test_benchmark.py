import json
import time

import pytest

from partwhole.scale import benchmark
from partwhole.workflow import costs


@pytest.fixture
def quick_baselines(monkeypatch):
    """SupCon's and XResNet's step timings are costs.py's (tested there); here a fixed cost keeps the check quick."""
    for name in ("supcon_seconds_per_image", "frozen_classifier_seconds_per_image", "xresnet_seconds_per_image"):
        monkeypatch.setattr(costs, name, lambda *args: 1e-3)


def test_tiny_gpu_check_reports_every_goal_beside_its_target(capsys, tmp_path, quick_baselines):
    assert benchmark.main(["--tiny", "--images", "6", "--reference-images", "2", "--repeats", "1",
                           "--set", "teacher_images=2", "--out", str(tmp_path),
                           "--started-at", str(time.time() - 100)]) == 0  # a set-up of 100 s before the command
    out = capsys.readouterr().out
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["git_commit"] and result["settings"]["teacher_images"] == 2
    assert result["gpus"] == {"count": 0, "scaling": "no GPU (a CPU run)"}
    assert list(result["variants"]) == ["profile", "switches"]
    assert result["variants"]["switches"]["sam_attention"] == "sdpa"
    teacher = result["teacher"]
    assert all(seconds > 0 for seconds in teacher["straightforward"]["seconds_per_image"].values())
    straightforward = teacher["straightforward"]["seconds_per_image"]
    for label in ("profile", "switches"):
        fast = teacher[label]["seconds_per_image"]
        assert all(seconds > 0 for seconds in fast.values()), label
        for crop in ("none", "bbox"):
            assert teacher[label]["speedup"][crop] == straightforward[crop] / fast[crop]
            assert fast[crop] == (fast["sam_encoder"] + fast["sam_decoder"] + fast["distinct_masks"]
                                  + fast[f"embedding_{crop}"])
            agree = teacher[label]["agreement"][crop]
            # the switches run SAM in bfloat16, whose random logits sit near the threshold: a looser bound
            assert min(agree["mask_iou"], agree["cosine_mean"]) >= (0.9999 if label == "profile" else 0.95), label
    assert teacher["profile"]["agreement"]["none"] != teacher["switches"]["agreement"]["none"]  # two paths measured
    # float16 targets: points x levels x dim x 2 bytes per image (64 x 3 x 32 x 2 = 12,288, plus the .npy header)
    settings = result["settings"]
    per_image = settings["grid"] ** 2 * 3 * settings["embedder_kwargs"]["channels"][-1] * 2
    assert per_image < teacher["profile"]["bytes_per_image"]["targets_per_crop_mode"] < per_image + 128 / 2
    pretraining = result["pretraining"]
    for label in ("float32", "profile", "switches"):
        assert pretraining[label]["images_per_s"] > 0 and pretraining[label]["peak_gib"] is None  # a CPU
    assert pretraining["switches"]["settings"]["checkpoint_iterations"]
    assert pretraining["profile"]["speedup"] == pretraining["profile"]["images_per_s"] / pretraining["float32"]["images_per_s"]
    for label in ("profile", "switches"):
        study = result["study"][label]
        notebooks = study["notebooks"]
        assert list(notebooks) == list(benchmark.NOTEBOOKS)
        assert study["seconds"] == pytest.approx(sum(s for s in notebooks.values() if s is not None))
        assert notebooks["02_mask_embeddings.ipynb"] and notebooks["07_controls.ipynb"]
        assert notebooks["08_tables.ipynb"] is None  # nothing trained there: said, not zero
    rows = {row["goal"]: row for row in result["goals"]}
    hours = rows["[profile] the whole study, in GPU-hours"]
    assert hours["measured"] == pytest.approx(result["study"]["profile"]["seconds"] / 3600)
    assert hours["ratio"] == hours["measured"] / benchmark.STUDY_HOURS_GOAL
    speed = rows["[switches] pretraining: images/s over float32's"]
    assert speed["target"] == benchmark.PRETRAINING_SPEED_GOAL == 3.0 and speed["met"] == (speed["measured"] >= 3.0)
    assert rows["[profile] pretraining: peak memory over float32's"]["met"] is None  # no GPU memory to compare
    check = rows["the whole check, in seconds"]
    assert 100 < check["measured"] == result["check_seconds"] and check["target"] == 600
    assert "of its 600 s budget" in out and "agreement with SAM bfloat16 (sdpa attention)" in out
    assert "no GPU (a CPU run)" in out


def test_goals_are_ratios_and_a_failed_step_is_reported_not_fatal():
    row = benchmark.goal("x", 1.5, 3.0, at_most=False)
    assert (row["ratio"], row["met"]) == (0.5, False)
    assert benchmark.goal("y", 0.4, 0.5, at_most=True)["met"] is True
    assert benchmark.goal("z", None, 1.0, at_most=True)["met"] is None
    failed = benchmark.measured(lambda: 1 / 0)
    assert failed["failure"].startswith("ZeroDivisionError")


def test_gpu_check_rehearses_the_notebooks_one_by_one_within_its_budget(tmp_path, monkeypatch):
    calls, clock = [], [0.0]

    def run_study(profile, overrides, results_dir, runs_dir, notebooks):
        calls.append((profile, overrides, notebooks))
        if overrides.get("seed") == 1 and notebooks[0].startswith("02"):
            raise benchmark.NotebookFailed("02_mask_embeddings.ipynb failed in cell 6: out of memory")
        clock[0] += 100.0
        return {notebooks[0]: 100.0}

    monkeypatch.setattr(benchmark, "run_study", run_study)
    monkeypatch.setattr(benchmark.time, "monotonic", lambda: clock[0])
    saved = []
    passed = benchmark.rehearse({}, deadline=1e6, save=saved.append)
    assert calls[-1][:2] == ("rehearsal", benchmark.GPU_REHEARSAL) and len(calls) == 8
    assert passed["passed"] and list(passed["notebook_seconds"]) == list(benchmark.NOTEBOOKS)
    assert len(saved) == 9  # after each notebook, and at the end
    failed = benchmark.rehearse({"seed": 1}, deadline=1e6)
    assert not failed["passed"] and "out of memory" in failed["stopped"] and failed["overrides"]["seed"] == 1
    assert calls[-1][1]["sam_model"] == "vit_h" and calls[-1][1]["embedder_image_size"] is None  # the paper's sizes
    clock[0] = 0.0
    cut = benchmark.rehearse({}, deadline=220.0)  # two notebooks of 100 s fit; 20 s left is under the reserve
    assert not cut["passed"] and list(cut["notebook_seconds"]) == list(benchmark.NOTEBOOKS[:2])
    assert cut["stopped"].startswith("03_pretraining_and_probe.ipynb not started: 20 s")
    result = {"variants": {}, "rehearsal": cut, "check_seconds": 660.0}
    rows = {row["goal"]: row for row in benchmark.goals(result)}
    assert rows["the rehearsal at GPU counts: notebooks passed, of 8"]["measured"] == 2
    assert rows["the whole check, in seconds"]["met"] is False and rows["the whole check, in seconds"]["ratio"] == 1.1


def test_the_rehearsal_alone_measures_nothing_else_and_keeps_the_whole_checks_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "run_study", lambda profile, overrides, results_dir, runs_dir, notebooks:
                        {notebooks[0]: 1.0})
    monkeypatch.setattr(benchmark, "run", lambda *args, **kwargs: pytest.fail("steps 1-3 ran"))
    whole_check = benchmark.output_path(tmp_path, benchmark.device_name("cpu"))
    whole_check.write_text("{}")
    assert benchmark.main(["--rehearse-only", "--set", "device=cpu", "--out", str(tmp_path)]) == 0
    assert whole_check.read_text() == "{}"  # the last whole check's measurements stay as they were
    result = json.loads(whole_check.with_name(whole_check.stem + "-rehearsal.json").read_text())
    assert result["rehearsal"]["passed"] and "teacher" not in result and "git_commit" in result
    assert [row["goal"] for row in result["goals"]] == ["the rehearsal at GPU counts: notebooks passed, of 8",
                                                        "the whole check, in seconds"]
    assert "rehearsal at GPU counts: passed" in capsys.readouterr().out
