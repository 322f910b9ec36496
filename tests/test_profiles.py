"""Every profile field is checked when a profile is built; every command refuses a bad setting in one line."""
import dataclasses
import json

import pytest

from partwhole import benchmark, embedder_training, multigpu, runner
from partwhole.profiles import PROFILES, Profile, SettingsError, get_profile, overrides_from, parse_overrides
from partwhole.study import Study

BAD = [  # field, value, a word the message must hold (what the field accepts)
    ("pretrain_epochs", "abc", "whole number"),
    ("seed", 1.5, "whole number"),
    ("image_size", 0, "from 1"),
    ("batch_size", -4, "from 1"),
    ("pretrain_epochs", 10**12, "to 2147483647"),
    ("seed", 10**20, "32-bit"),
    ("dataset_seed", 2**32, "32-bit"),
    ("dataset_path", "/data/imagenette2", "generated"),  # the embedded profile's scenes read no folder
    ("crop", "bboxx", "bbox"),
    ("schedule", "cosine", "one_cycle"),
    ("lr", 0, "above 0"),
    ("probe_wd", -1, "at least 0"),
    ("holdout_fraction", 1.5, "between 0 and 1"),
    ("betas", [0.9], "two numbers"),
    ("device", "gpu", "cuda"),
    ("grid", 5, "multiple of grid"),  # 64 px / 4 does not split into 5 x 5 patches
    ("scene_scale", [0.9, 0.5], "0 < low <= high <= 1"),
    ("scene_clutter", [2, 1.5], "whole numbers"),
    ("scene_textured", "yes", "true or false"),
]


@pytest.mark.parametrize("field, value, accepts", BAD)
def test_a_bad_value_is_refused_naming_the_field_and_what_it_accepts(field, value, accepts):
    with pytest.raises(SettingsError) as error:
        get_profile("embedded", **{field: value})
    message = str(error.value)
    assert field in message and accepts in message and "\n" not in message


FLOAT_FIELDS = [(f.name, f.type) for f in dataclasses.fields(Profile) if "float" in str(f.type)]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_in_every_number_field(value):
    assert {"lr", "wd", "probe_lr", "probe_wd", "holdout_fraction"} <= {name for name, _ in FLOAT_FIELDS}
    for name, _ in FLOAT_FIELDS:
        with pytest.raises(SettingsError, match="finite"):
            get_profile("embedded", **{name: value})
    for name in ("betas", "scene_scale"):  # numbers inside a list
        with pytest.raises(SettingsError, match="finite"):
            get_profile("embedded", **{name: [0.5, value]})
    parsed = parse_overrides(["lr=NaN", "probe_lr=Infinity"])  # JSON's spellings, as --set reads them
    with pytest.raises(SettingsError, match="finite"):
        get_profile("embedded", **parsed)


def test_every_profile_is_valid_and_unknown_names_are_refused_in_one_line():
    for name in PROFILES:
        get_profile(name)
    for bad in (lambda: get_profile("papr"), lambda: get_profile("embedded", pretrain_epoch=2)):
        with pytest.raises(SettingsError) as error:
            bad()
        assert "\n" not in str(error.value)
    with pytest.raises(SettingsError, match="did you mean pretrain_epochs"):
        get_profile("embedded", pretrain_epoch=2)


def test_overrides_come_as_pairs_dicts_or_json_text():
    assert parse_overrides(["pretrain_epochs=2", "crop=bbox", "betas=[0.9, 0.99]"]) == {
        "pretrain_epochs": 2, "crop": "bbox", "betas": [0.9, 0.99]}
    with pytest.raises(SettingsError, match="FIELD=VALUE"):
        parse_overrides(["pretrain_epochs"])
    assert overrides_from('{"seed": 1}') == {"seed": 1} == overrides_from({"seed": 1})
    assert overrides_from("") == {} == overrides_from(None)
    for bad in ("{seed: 1}", "[1, 2]"):
        with pytest.raises(SettingsError, match="overrides"):
            overrides_from(bad)


def test_a_notebook_run_alone_refuses_bad_settings_from_its_first_cell(tmp_path):
    with pytest.raises(SettingsError, match="crop"):
        Study("embedded", json.dumps({"crop": "bboxx"}), runs_dir=tmp_path)
    with pytest.raises(SettingsError, match="profile"):
        Study(None, {}, runs_dir=tmp_path)


COMMANDS = {
    "runner": lambda extra: runner.main(["--profile", "embedded", *extra]),
    "multigpu": lambda extra: multigpu.main(["targets", "--profile", "embedded", *extra]),
    "benchmark": lambda extra: benchmark.main(["--tiny", *extra]),
    "embedder_training": lambda extra: embedder_training.main(extra),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("extra, named", [(["--set", "crop=bboxx"], "crop"), (["--set", "pretrain_epochs=abc"],
                                                                                "pretrain_epochs"),
                                          (["--set", "nonsense=1"], "nonsense")])
def test_every_command_refuses_a_bad_setting_in_one_line_with_status_2(command, extra, named, capsys):
    assert COMMANDS[command](extra) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("partwhole: ")
    assert "Traceback" not in captured.out + captured.err
