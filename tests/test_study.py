"""The whole study, executed through papermill as the runner does, on a shrunken embedded default."""
import json
import re
import shutil
from pathlib import Path

import pytest

from partwhole.core import downloads
from partwhole.workflow import costs, runner
from partwhole.study.profiles import SettingsError, get_profile, parse_overrides
from partwhole.study.study import distillation_run

SMALL = {"train_per_class": 3, "val_per_class": 2, "pretrain_epochs": 1, "probe_epochs": 1, "batch_size": 8,
         "contrastive_epochs": 2, "xresnet_epochs": 2}  # the pipeline, not the accuracies


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    runner.run_study("embedded", SMALL, results_dir=out / "results", runs_dir=out / "runs")
    return out


def test_every_notebook_is_executed_into_results(executed):
    for name in runner.NOTEBOOKS:
        notebook = json.loads((executed / "results" / name).read_text())
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] is not None for c in code), name
        assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"]), name


def test_metrics_carry_their_provenance(executed):
    metrics = json.loads((executed / "results" / "metrics" / "pretrained-crop_none.json").read_text())
    assert set(metrics["accuracy"]) == {"holdout", "val", "val_by_class", "val_confusion"}
    assert len(metrics["accuracy"]["val_by_class"]) == len(metrics["classes"])
    assert 0 <= metrics["accuracy"]["val"] <= 1
    for field in ("profile", "seed", "device", "git_commit", "libraries", "wall_time_s", "epochs", "parameters",
                  "training"):
        assert field in metrics, field
    assert metrics["settings"]["train_per_class"] == 3  # overrides are recorded
    assert (executed / "results" / "metrics" / "no_pretraining.json").exists()


def test_tables_put_paper_and_measured_side_by_side(executed):
    tables = (executed / "results" / "tables.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4"):
        assert title in tables
    table3 = tables[tables.index("Table 3") : tables.index("Table 4")]
    assert "91.20%" in table3 and "reported in the paper" in table3  # the paper's row, labelled
    assert table3.count("measured: embedded") == 3  # SAM pretraining, no pretraining, supervised contrastive
    assert (executed / "results" / "figures" / "01_teacher_masks.png").exists()


def test_a_failing_notebook_stops_the_runner_naming_it(tmp_path, capfd):
    with pytest.raises(runner.NotebookFailed, match="08_tables.ipynb failed") as failure:
        runner.run_study("embedded", SMALL, results_dir=tmp_path, runs_dir=tmp_path / "runs", notebooks=("08_tables.ipynb",))
    # the failing line, in the notebook and in the library, named without opening the executed copy
    assert re.search(r"Cell In\[\d+\], line \d+\n +---> \d+ metrics = read_metrics", str(failure.value))
    assert re.search(r"results\.py:\d+, in read_metrics.*\n +---> \d+ +raise FileNotFoundError", str(failure.value))
    assert (tmp_path / "08_tables.ipynb").exists()  # the executed copy is kept for inspection
    assert "Kernel is running over TCP" not in capfd.readouterr().err  # the kernel's start-up log stays quiet


def test_a_run_is_named_by_the_settings_it_varies():
    paper = get_profile("paper")
    assert distillation_run(paper) == "crop_none"
    assert distillation_run(get_profile("paper", crop="bbox", levels_encoder=True)) == "crop_bbox-levels_encoder"
    assert distillation_run(get_profile("paper", level_weights=[1, 1, 1])) == "crop_none-level_weights_1_1_1"
    assert distillation_run(get_profile("paper", level_weights=[0.1, 0.2, 0.7])) == "crop_none"


def test_dry_run_of_the_paper_profile_lists_runs_and_downloads(capsys):
    assert runner.main(["--profile", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sam_vit_h_4b8939.pth" in out and "2.56 GB" in out
    assert "imagenette" in out.lower() and "1.5 GB" in out
    assert "maxvit_rmlp_pico_rw_256.sw_in1k" in out
    assert "vit_small_patch16_224.dino" in out  # the self-supervised control's embedder
    for notebook in ("02", "03", "04", "05", "07"):
        assert f"\n  {notebook} " in out, notebook
    for run in ("crop=bbox (Table 1)", "levels encoder (Table 2)", "probe without pretraining (Table 3)",
                "the same probe for 5 epochs (Table 4)", "original configuration, RandAugment (Table 3's None)",
                "original configuration (Table 3)", "xse_resnext50 at 256 px, batch 64", "control shuffled_masks"):
        assert run in out  # every run the tables need
    assert "ours configuration" not in out  # 2.55 B parameters at 14 x 14 x 256: not a paper-profile run
    assert "run the dry run on the GPU you will use" in out  # no CPU timing passed off as a GPU estimate


def test_the_plan_lists_every_run_at_its_cost_in_images_and_epochs():
    profile = get_profile("embedded")
    runs = {run.name: run for run in costs.study_runs(profile, target_dim=32, device=None)}
    images = costs.split_sizes(profile)["train"]
    doubled = runs["the same pretraining at twice the epochs + probe (plateau check)"]
    assert (doubled.images, doubled.epochs) == (images, 2 * profile.pretrain_epochs + 1)
    assert "distillation pretraining + probe, equal level weights" in runs
    shares_below_one = sum(f < 1 for f in profile.label_fractions)  # each repeated to the fit set's length
    curve = next(run for name, run in runs.items() if name.startswith("data efficiency: xresnet18"))
    assert (curve.images, curve.epochs) == (shares_below_one * images, profile.xresnet_epochs)
    assert not any("SupCon" in name for name in runs if name.startswith("data efficiency"))  # Table 3's run alone
    assert not any("plateau check" in name for name in
                   (run.name for run in costs.study_runs(get_profile("paper"), target_dim=256, device=None)))


def test_dry_run_of_the_embedded_profile_estimates_each_run(capsys):
    assert runner.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "estimated on CPU" in out and "total of the timed runs" in out


def test_offline_paper_run_fails_before_any_notebook(monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise RuntimeError("no internet: download it from <url>")

    monkeypatch.setattr(downloads, "imagenette_root", offline)
    monkeypatch.setattr(downloads, "sam_checkpoint", offline)
    monkeypatch.setattr(downloads, "create_timm_model", offline)
    monkeypatch.setattr(runner, "run_study", lambda *a, **k: pytest.fail("a notebook ran"))
    assert runner.main(["--profile", "paper"]) == 2
    err = capsys.readouterr().err
    assert err.count("no internet") == 4 and "sam_vit_h_4b8939.pth" in err  # + the DINO control's weights


def test_overrides_parse_as_json_or_text():
    assert parse_overrides(["pretrain_epochs=2", "dataset_path=/data/x", "levels_encoder=true"]) == {
        "pretrain_epochs": 2, "dataset_path": "/data/x", "levels_encoder": True}
    with pytest.raises(SettingsError, match="unknown profile field epochs"):
        get_profile("embedded", epochs=3)


def test_further_seeds_run_apart_and_the_tables_pool_them(executed, tmp_path):
    shutil.copytree(executed, tmp_path, dirs_exist_ok=True)  # the other tests keep their single-seed results
    runner.run_study("embedded", SMALL, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs",
                     notebooks=("02_mask_embeddings.ipynb", "03_pretraining_and_probe.ipynb", "08_tables.ipynb"),
                     seeds=2)
    seed_dir = tmp_path / "results" / "seeds" / "seed_43"
    settings = json.loads((seed_dir / "metrics" / "pretrained-crop_none.json").read_text())["settings"]
    assert settings["seed"] == settings["dataset_seed"] == settings["embedder_seed"] == 43  # every random source
    assert list((tmp_path / "runs" / "seeds" / "seed_43" / "checkpoints").glob("seed_43-*/pretrained-crop_none.pt"))
    tables = (tmp_path / "results" / "tables.md").read_text()
    assert "(n=2; next seed" in tables and "seeds 42, 43" in tables


def test_resume_keeps_the_notebooks_run_by_this_code_and_goes_on_from_the_first_other(executed, tmp_path,
                                                                                        monkeypatch):
    shutil.copytree(executed, tmp_path, dirs_exist_ok=True)
    names = [name for name in runner.NOTEBOOKS if name != runner.TABLES]
    recorded = json.loads((tmp_path / "results" / runner.EXECUTED).read_text())
    monkeypatch.setattr(runner.papermill, "execute_notebook", lambda *a, **k: pytest.fail("a kept notebook ran"))
    kept = runner.run_study("embedded", SMALL, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs",
                            notebooks=names, resume=True)
    assert kept == {name: recorded[name]["seconds"] for name in names}

    ran = []
    def execute(source, executed_copy, **_):
        ran.append(Path(source).name)
        shutil.copy(source, executed_copy)
    monkeypatch.setattr(runner.papermill, "execute_notebook", execute)
    def resume_after_changing(name):
        record = json.loads((tmp_path / "results" / runner.EXECUTED).read_text())
        record[name]["fingerprint"] = "other code"
        (tmp_path / "results" / runner.EXECUTED).write_text(json.dumps(record))
        ran.clear()
        return runner.run_study("embedded", SMALL, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs",
                                notebooks=names, resume=True)

    seconds = resume_after_changing("03_pretraining_and_probe.ipynb")
    assert ran == names[2:]  # 01 and 02 kept; from 03 on all run, as each reads what the one before it left
    assert [seconds[name] for name in names[:2]] == [recorded[name]["seconds"] for name in names[:2]]
    (tmp_path / "results" / "04_ablations.ipynb").unlink()  # an executed copy lost: it and every later one run
    resume_after_changing("06_islands.ipynb")
    assert ran == names[3:]
    for entry in (tmp_path / "runs").iterdir():  # the checkpoints gone: the kept notebooks' work is lost with them
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    resume_after_changing("05_baselines.ipynb")
    assert ran == names


def test_artefacts_are_keyed_on_the_settings_that_reach_them(tmp_path):
    from partwhole.study.study import Study

    def study(**fields):
        return Study("embedded", fields, runs_dir=tmp_path, results_dir=tmp_path / "results")

    base = study()
    for unrelated in ({"probe_epochs": 3}, {"teacher_batch": 7}, {"probe_lr": 1e-2}, {"xresnet_epochs": 2}):
        assert study(**unrelated).checkpoint("pretrained-crop_none") == base.checkpoint("pretrained-crop_none")
        assert study(**unrelated).targets_dir == base.targets_dir
    assert study(seed=77).targets_dir == base.targets_dir  # the student's seed does not reach the targets
    for other in ({"seed": 77}, {"dataset_seed": 77}, {"lr": 1e-3}, {"crop": "bbox"}):
        assert study(**other).checkpoint("pretrained-crop_none") != base.checkpoint("pretrained-crop_none"), other
    for other in ({"dataset_seed": 77}, {"train_per_class": 5}, {"embedder_weights": None}, {"grid": 4}):
        assert study(**other).targets_dir != base.targets_dir, other
    assert study(seed=77, dataset_seed=77).targets_dir.parent == base.targets_dir.parent  # side by side
