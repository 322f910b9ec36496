import json

from partwhole import benchmark


def test_tiny_gpu_check_measures_both_paths_and_writes_its_goals(capsys, tmp_path):
    assert benchmark.main(["--tiny", "--images", "6", "--reference-images", "2", "--repeats", "1",
                           "--set", "teacher_images=2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["git_commit"] and result["settings"]["teacher_images"] == 2
    teacher = result["teacher"]
    for path_name, stages in teacher["seconds_per_image"].items():
        assert all(seconds > 0 for seconds in stages.values()), path_name
    fast, straightforward = teacher["seconds_per_image"]["fast"], teacher["seconds_per_image"]["straightforward"]
    for crop in ("none", "bbox"):
        assert teacher["speedup"][crop] == straightforward[crop] / fast[crop]
        assert fast[crop] == fast["sam_encoder"] + fast["sam_decoder"] + fast["distinct_masks"] + fast[f"embedding_{crop}"]
    assert teacher["agreement"]["mask_iou"] >= 0.99 and teacher["agreement"]["cosine_mean"] >= 0.99
    # float16 targets: points x levels x dim x 2 bytes per image (64 x 3 x 32 x 2 = 12,288, plus the .npy header)
    settings = result["settings"]
    per_image = settings["grid"] ** 2 * 3 * settings["embedder_kwargs"]["channels"][-1] * 2
    assert per_image < teacher["bytes_per_image"]["targets_per_crop_mode"] < per_image + 128 / 2
    pretraining = result["pretraining"]
    assert pretraining["float32"]["images_per_s"] > 0 and pretraining["bfloat16"]["peak_gib"] is None  # a CPU
    assert [goal["met"] for goal in result["goals"]][-1] is None  # no GPU memory to compare
    assert len(result["goals"]) == 4 and "MISSED" in out or "met" in out
    assert result["study"] and all(run["seconds"] for run in result["study"][:2])


def test_gpu_check_rehearses_the_notebooks_at_larger_counts_and_records_them(tmp_path, monkeypatch):
    calls = []

    def run_study(profile, overrides, results_dir, runs_dir):
        calls.append((profile, overrides))
        if overrides.get("seed") == 1:
            raise benchmark.NotebookFailed("02_mask_embeddings.ipynb failed in cell 6: out of memory")
        return {"01_teacher_masks.ipynb": 12.5, "08_tables.ipynb": 3.0}

    monkeypatch.setattr(benchmark, "run_study", run_study)
    passed = benchmark.rehearse({})
    assert calls[-1] == ("rehearsal", benchmark.GPU_REHEARSAL)
    assert passed["passed"] and passed["notebook_seconds"]["01_teacher_masks.ipynb"] == 12.5
    failed = benchmark.rehearse({"seed": 1})
    assert not failed["passed"] and "out of memory" in failed["failure"] and failed["overrides"]["seed"] == 1
    assert calls[-1][1]["sam_model"] == "vit_h" and calls[-1][1]["embedder_image_size"] is None  # the paper's sizes
