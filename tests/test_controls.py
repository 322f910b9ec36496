import numpy as np
import pytest
import torch

from partwhole.analysis import controls
from partwhole.analysis.controls import CONTROLS, ControlStudy, ShuffledMasks, WholeImageTeacher, controls_table
from partwhole.study.profiles import get_profile
from partwhole.study.study import Study

TINY = {"train_per_class": 3, "val_per_class": 2, "pretrain_epochs": 1, "probe_epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("controls")
    return Study("embedded", TINY, runs_dir=out / "runs", results_dir=out / "results")


def control(name):
    return next(c for c in CONTROLS if c.name == name)


def test_whole_image_teacher_masks_are_all_ones():
    masks = WholeImageTeacher(image_size=32, grid=4)(np.zeros((32, 32, 3), np.uint8))
    assert masks.shape == (16, 3, 32, 32) and masks.dtype == torch.bool and masks.all()


def test_shuffled_masks_are_another_images_and_deterministic(study):
    images, pixels = study.images("train"), study.pixels("train")
    shuffled = ShuffledMasks(study.teacher, images, pixels, seed=0)
    assert (shuffled.source != np.arange(len(images))).all()  # no image keeps its own masks
    assert sorted(shuffled.source) == list(range(len(images)))  # every image's masks are used once
    assert np.array_equal(shuffled.source, ShuffledMasks(study.teacher, images, pixels, seed=0).source)
    assert not np.array_equal(shuffled.source, ShuffledMasks(study.teacher, images, pixels, seed=1).source)
    for i in range(len(images)):
        j = shuffled.source[i]
        masks = shuffled(np.asarray(pixels[i]), images.paths[i])
        assert torch.equal(masks, study.teacher(np.asarray(pixels[j]), images.paths[j]))
        assert not torch.equal(masks, study.teacher(np.asarray(pixels[i]), images.paths[i]))  # scenes differ
    with pytest.raises(KeyError, match="not an image of the train split"):
        shuffled(np.asarray(pixels[0]), study.images("val").paths[0])


def test_no_masks_targets_are_the_whole_images_embedding(study):
    control_study = ControlStudy(control("no_masks"), "embedded", TINY, runs_dir=study.runs_dir,
                                 results_dir=study.results_dir)
    control_study.build_targets("train")
    targets = np.asarray(control_study.targets("train"), dtype=np.float32)  # (N, P, L, D)
    assert control_study.targets_dir != study.targets_dir and control_study.targets_dir.is_relative_to(study.runs_dir)
    images = np.arange(len(control_study.images("train")))
    whole = controls.whole_image_features(control_study.embedder, control_study.pixels("train"), images).numpy()
    assert np.allclose(targets, whole[:, None], atol=2e-3 * np.abs(whole).max())  # float16 targets
    assert targets.std(axis=0).mean() > 0  # and the images still differ from each other


def test_teacher_ceiling_probes_the_embedders_features(study):
    result = controls.teacher_ceiling(study)
    assert set(result["accuracy"]) == {"holdout", "val", "val_by_class", "val_confusion"}
    assert result["metrics"].name == "control-teacher_ceiling.json"


def test_bag_of_parts_probes_the_mean_subpart_target_of_each_image(study, monkeypatch):
    seen = {}
    real = controls.probe_features

    def capture(profile, features, n_classes, device):
        seen.update(features)
        return real(profile, features, n_classes, device)

    monkeypatch.setattr(controls, "probe_features", capture)
    for split in ("train", "val"):
        study.build_targets(split)
    for control, crop in ((controls.BAG_OF_PARTS, "bbox"), (controls.POSITIONAL_BAG_OF_PARTS, "none")):
        result = controls.bag_of_parts(study, control)
        assert result["metrics"].name == f"control-{control}.json"
        assert len(result["accuracy"]["val_by_class"]) == len(study.images("val").classes)
        val_targets = np.asarray(study.targets("val", crop), dtype=np.float32)
        other = np.asarray(study.targets("val", {"bbox": "none", "none": "bbox"}[crop]), dtype=np.float32)
        assert seen["val"][0].shape == (len(val_targets), 1, val_targets.shape[-1])  # one column: no arrangement
        assert torch.allclose(seen["val"][0][:, 0], torch.from_numpy(val_targets[:, :, 0].mean(axis=1)))
        assert not torch.allclose(seen["val"][0][:, 0], torch.from_numpy(val_targets[:, :, 2].mean(axis=1)))
        assert not torch.allclose(seen["val"][0][:, 0], torch.from_numpy(other[:, :, 0].mean(axis=1)))


def test_random_embedder_control_changes_only_the_embedder():
    profile = ControlStudy(control("random_embedder"), "paper").profile
    assert not profile.embedder_pretrained and profile.embedder == get_profile("paper").embedder
    assert profile.embedder_weights is None


def test_self_supervised_control_runs_only_where_weights_are_downloaded():
    dino = control("self_supervised_embedder")
    assert not controls.can_run(dino, get_profile("embedded"))
    assert controls.can_run(dino, get_profile("paper"))
    assert controls.reference_run(dino, get_profile("paper")) == "pretrained-crop_none-levels_encoder"
    assert all(controls.can_run(c, get_profile("embedded")) for c in CONTROLS if c is not dino)


def record(accuracy, run="pretrained-crop_none", **fields):
    return {"run": run, "profile": "embedded", "device": "CPU", "seed": 42, "git_commit": "abc",
            "cells": {"pretraining": "teacher"}, "accuracy": {"val": accuracy, "holdout": accuracy}} | fields


def test_table_lists_every_control_and_says_why_one_did_not_run():
    metrics = {"pretrained-crop_none": record(0.5)}
    ran = [c for c in CONTROLS if not c.self_supervised]
    for i, c in enumerate(ran):
        metrics[f"pretrained-control-{c.name}"] = record(0.1 * i, f"pretrained-control-{c.name}", control=c.name,
                                                         removes=c.removes, reference="pretrained-crop_none")
    metrics["control-teacher_ceiling"] = record(0.9, "control-teacher_ceiling", control="teacher_ceiling",
                                                reference="pretrained-crop_none")
    table = controls_table(metrics)
    lines = table.splitlines()
    assert "reference: teacher (pretrained-crop_none)" in lines[4] and "50.00%" in lines[4]
    for c in CONTROLS:
        assert sum(line.startswith(f"| {c.name} |") for line in lines) == 1, c.name
    assert "| teacher_ceiling |" in table and "90.00%" in table
    assert "not run in the embedded profile: it names no self-supervised embedder" in table
    assert table.count("measured: embedded") == len(ran) + 2  # the controls that ran, the ceiling, the reference
