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
    # float16 targets: points x levels x dim x 2 bytes per image (64 x 3 x 64 x 2 = 24,576, plus the .npy header)
    assert 24_576 < teacher["bytes_per_image"]["targets_per_crop_mode"] < 24_576 + 128 / 2
    pretraining = result["pretraining"]
    assert pretraining["float32"]["images_per_s"] > 0 and pretraining["bfloat16"]["peak_gib"] is None  # a CPU
    assert [goal["met"] for goal in result["goals"]][-1] is None  # no GPU memory to compare
    assert len(result["goals"]) == 4 and "MISSED" in out or "met" in out
    assert result["study"] and all(run["seconds"] for run in result["study"][:2])
