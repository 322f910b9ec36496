import json

import pytest
import torch

from partwhole import synthetic
from partwhole.data import image_cache, list_images
from partwhole.embedder_training import report_path, train_embedder, training_report
from partwhole.profiles import get_profile
from partwhole.study import Study
from partwhole.embedder import MaskEmbedder
from partwhole.targets import manifest

TINY = {"image_size": 32, "grid": 4, "embedder_data_config": {"input_size": (3, 32, 32), "crop_pct": 1.0},
        "embedder_training_epochs": 1}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("scenes"), seed=0, image_size=32, train_per_class=2, val_per_class=1)
    cache = tmp_path_factory.mktemp("cache")
    return {split: image_cache(list_images(root, split), 32, cache) for split in ("train", "val")}


def train(profile, splits, directory):
    return train_embedder(profile, splits["train"], splits["val"], directory, "cpu")


def test_trained_weights_are_saved_and_loaded_by_timm_without_the_head(splits, tmp_path):
    profile = get_profile("embedded", **TINY)
    path = train(profile, splits, tmp_path)
    saved = torch.load(path, map_location="cpu")
    embedder = MaskEmbedder.from_profile(profile, "cpu", path)
    head = embedder.model.pretrained_cfg["classifier"]  # timm's name of the classifier layer ("fc", "head", ...)
    assert saved[f"{head}.weight"].shape[0] == len(splits["train"][0].classes)  # trained as a classifier
    report = training_report(path)
    assert 0.0 <= report["val_accuracy"] <= 1.0 and report["settings"]["recipe"]["epochs"] == 1

    loaded = embedder.model.state_dict()
    assert set(saved) - set(loaded) == {f"{head}.weight", f"{head}.bias"}  # num_classes=0: pooled features only
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)
    random = MaskEmbedder.from_profile(profile, "cpu").model.state_dict()  # no checkpoint: timm's random weights
    assert not all(torch.equal(random[k], saved[k]) for k in random)


def test_a_file_with_the_same_settings_is_reused_and_one_with_other_settings_retrained(splits, tmp_path):
    profile = get_profile("embedded", **TINY)
    path = train(profile, splits, tmp_path)
    written = path.stat().st_mtime_ns
    assert train(profile, splits, tmp_path) == path and path.stat().st_mtime_ns == written

    report = training_report(path)
    report["settings"]["recipe"]["lr"] *= 10  # as if trained by an older version with another learning rate
    report_path(path).write_text(json.dumps(report))
    assert train(profile, splits, tmp_path) == path
    assert path.stat().st_mtime_ns != written and training_report(path)["settings"]["recipe"]["lr"] != report["settings"]["recipe"]["lr"]

    longer = train(get_profile("embedded", **TINY | {"embedder_training_epochs": 2}), splits, tmp_path)
    assert longer != path and training_report(longer)["settings"]["recipe"]["epochs"] == 2


def test_the_targets_manifest_changes_with_the_embedders_training_but_not_with_the_students_seed(splits):
    images = splits["train"][0]

    def embedder_entry(**overrides):
        return manifest(get_profile("embedded", **TINY | overrides), images, "none", 64, {})["embedder"]

    trained = embedder_entry()
    assert trained["training"]["epochs"] == 1 and trained["training"]["split"] == "train"
    assert embedder_entry(embedder_training_epochs=2) != trained
    assert embedder_entry(embedder_seed=7) != trained
    assert embedder_entry(seed=7) == trained  # runs of every training seed share the targets
    assert embedder_entry(embedder_training_epochs=0)["training"] is None


def test_the_study_trains_its_embedder_only_when_the_profile_says_so(tmp_path):
    small = TINY | {"train_per_class": 1, "val_per_class": 1}
    trained = Study("embedded", small, runs_dir=tmp_path / "trained", results_dir=tmp_path / "results").embedder
    assert trained.checkpoint is not None and trained.checkpoint.parent == tmp_path / "trained" / "checkpoints"

    control = {"embedder_pretrained": False, "embedder_training_epochs": 0}  # the same architecture, random weights
    random = Study("embedded", small | control, runs_dir=tmp_path / "random", results_dir=tmp_path / "results").embedder
    assert random.checkpoint is None and not (tmp_path / "random" / "checkpoints").exists()
    first_weight = lambda embedder: next(embedder.model.parameters())  # noqa: E731
    assert not torch.equal(first_weight(random), first_weight(trained))
