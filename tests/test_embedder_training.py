import json

import pytest
import torch

from partwhole.core.artefacts import DamagedFile
from partwhole.method.embedder import MaskEmbedder, weights_digest, weights_path
from partwhole.study.embedder_training import Recipe, main, train, training_report
from partwhole.study.profiles import SettingsError, get_profile
from partwhole.study.study import Study
from partwhole.method.targets import manifest

TINY = {"image_size": 32, "grid": 4, "embedder_data_config": {"input_size": (3, 32, 32), "crop_pct": 1.0}}
QUICK = Recipe(train_per_class=2, val_per_class=1, epochs=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A profile whose embedder_weights name a file trained here (one epoch on 20 scenes), and the report."""
    path = tmp_path_factory.mktemp("weights") / "tiny-embedder.pt"
    report = train(get_profile("embedded", **TINY), QUICK, path, "cpu")
    return get_profile("embedded", **TINY | {"embedder_weights": str(path)}), path, report


def test_the_shipped_weights_fit_the_embedded_profile_and_have_their_report():
    profile = get_profile("embedded")
    path = weights_path(profile.embedder_weights)
    assert path.parent.name == "weights" and path.is_file()
    report = training_report(path)
    assert report["weights_sha256"] == weights_digest(profile.embedder_weights).split("sha256 ")[1].rstrip(")")
    assert report["embedder"]["name"] == profile.embedder and report["scene_style"] == profile.scene_key()
    MaskEmbedder.from_profile(profile, "cpu")  # loads: the architecture and the file agree


def test_trained_weights_are_loaded_without_the_classifier_head(trained):
    profile, path, report = trained
    saved = torch.load(path, map_location="cpu")
    embedder = MaskEmbedder.from_profile(profile, "cpu")
    head = embedder.model.pretrained_cfg["classifier"]  # timm's name of the classifier layer ("fc", "head", ...)
    assert saved[f"{head}.weight"].shape[0] == 10  # trained as a classifier of the ten classes
    loaded = embedder.model.state_dict()
    assert set(saved) - set(loaded) == {f"{head}.weight", f"{head}.bias"}  # num_classes=0: pooled features only
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)
    random = MaskEmbedder.from_profile(get_profile("embedded", **TINY | {"embedder_weights": None}), "cpu")
    assert not all(torch.equal(random.model.state_dict()[k], saved[k]) for k in loaded)
    assert report["recipe"]["epochs"] == 1 and 0.0 <= report["accuracy"]["embedder's held-out scenes"] <= 1.0


def test_the_targets_manifest_names_the_weights_by_content_not_by_the_students_seed(trained, tmp_path):
    profile, path, _ = trained
    study = Study("embedded", TINY | {"embedder_weights": str(path), "train_per_class": 1, "val_per_class": 1},
                  runs_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    images = study.images("train")

    def weights_entry(p):
        return manifest(p, images, "none", 64, {})["embedder"]["weights"]

    assert weights_entry(profile) == weights_entry(get_profile("embedded", **TINY | {"embedder_weights": str(path),
                                                                                     "seed": 7}))
    retrained = tmp_path / path.name
    retrained.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))  # one bit flipped
    assert weights_entry(get_profile("embedded", **TINY | {"embedder_weights": str(retrained)})) != weights_entry(profile)


@pytest.mark.parametrize("damage", ["truncated", "other architecture", "missing"])
def test_damaged_or_missing_weights_name_the_file_and_the_command_that_remakes_it(trained, tmp_path, damage):
    profile, path, _ = trained
    bad = tmp_path / "bad.pt"
    if damage == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "other architecture":
        torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises((DamagedFile, FileNotFoundError)) as error:
        weights_digest(str(bad))
        MaskEmbedder.from_profile(get_profile("embedded", **TINY | {"embedder_weights": str(bad)}), "cpu")
    assert str(bad) in str(error.value) and "python -m partwhole.study.embedder_training" in str(error.value)


def test_the_command_refuses_a_bad_setting_in_one_line(capsys):
    assert main(["--set", "image_size=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image_size" in err


def test_weights_are_never_overwritten_by_an_unfinished_training(trained, tmp_path, capsys, monkeypatch):
    profile, path, _ = trained
    out = tmp_path / path.name
    out.write_bytes(path.read_bytes())
    (tmp_path / path.with_suffix(".json").name).write_bytes(path.with_suffix(".json").read_bytes())
    before = out.read_bytes()
    assert main(["--epochs", "0", "--out", str(out)]) == 2  # refused up front
    assert "--epochs 0" in capsys.readouterr().err
    with pytest.raises(SettingsError, match="at least 1 epoch"):
        train(profile, Recipe(epochs=-1), out, "cpu")
    from partwhole.study import embedder_training

    def interrupted(*args, **kwargs):  # killed once trained, while its report is made
        raise KeyboardInterrupt

    monkeypatch.setattr(embedder_training, "provenance", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(get_profile("embedded", **TINY), QUICK, out, "cpu")
    assert out.read_bytes() == before and {p.name for p in tmp_path.iterdir()} == {out.name, out.stem + ".json"}
    MaskEmbedder.from_profile(get_profile("embedded", **TINY | {"embedder_weights": str(out)}), "cpu")


def test_the_loader_refuses_weights_their_report_does_not_vouch_for(trained, tmp_path):
    profile, path, _ = trained
    out = tmp_path / path.name
    out.write_bytes(path.read_bytes())
    with pytest.raises(DamagedFile, match="no training report"):
        MaskEmbedder.from_profile(get_profile("embedded", **TINY | {"embedder_weights": str(out)}), "cpu")
    report = json.loads(path.with_suffix(".json").read_text())
    (tmp_path / out.with_suffix(".json").name).write_text(json.dumps(report | {"weights_sha256": "0" * 12}))
    with pytest.raises(DamagedFile, match="not those their report"):
        MaskEmbedder.from_profile(get_profile("embedded", **TINY | {"embedder_weights": str(out)}), "cpu")
