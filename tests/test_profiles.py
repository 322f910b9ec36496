"""Every profile field is checked when a profile is built; every command refuses a bad setting in one line."""
import dataclasses
import json

import pytest

from partwhole.scale import benchmark, multigpu
from partwhole.study import embedder_training
from partwhole.workflow import runner
from partwhole.study.profiles import PROFILES, Profile, SettingsError, get_profile, overrides_from, parse_overrides
from partwhole.study.study import Study

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
    ("level_weights", [0.5, 0.5], "one weight per level"),
    ("level_weights", [0.1, -0.2, 0.7], "each at least 0"),
    ("level_weights", [0, 0, 0], "not all 0"),
    ("level_weights", [0.1, True, 0.7], "one weight per level"),
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
    for name, numbers in (("betas", [0.5, value]), ("scene_scale", [0.5, value]), ("level_weights", [0.5, 0.5, value])):
        with pytest.raises(SettingsError, match="finite"):  # numbers inside a list
            get_profile("embedded", **{name: numbers})
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
                                          (["--set", "nonsense=1"], "nonsense"),
                                          (["--set", "device=cuda:99"], "device")])  # a GPU this machine lacks
def test_every_command_refuses_a_bad_setting_in_one_line_with_status_2(command, extra, named, capsys):
    assert COMMANDS[command](extra) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("partwhole: ")
    assert "Traceback" not in captured.out + captured.err


class FakeShell:
    """IPython's shell as the check sees it: the cells run so far, the current one last."""

    def __init__(self, *cells):
        self.user_ns = {"In": ["", *cells, "check_notebook_parameters()"]}


DECLARED = 'profile = "embedded"  # a comment\noverrides = {}\nresults_dir = None\nexample_index = 0\nscale = 0.5'


@pytest.mark.parametrize("injected, message", [
    ('# Parameters\nprofle = "paper"\n', "unknown notebook parameter profle (did you mean profile?)"),
    ('# Parameters\noverides = {"seed": 1}\n', "did you mean overrides?"),
    ("# Parameters\nresults_dir = 5\n", "results_dir=5 (int): results_dir takes str or None"),
    ('# Parameters\nprofile = ["paper"]\n', "profile takes str"),
    ('# Parameters\nexample_index = "3"\n', "example_index takes int"),
    ("# Parameters\nexample_index = True\n", "example_index takes int"),
])
def test_a_notebook_refuses_unknown_or_mistyped_parameters(injected, message):
    from partwhole.study.profiles import check_notebook_parameters

    with pytest.raises(SettingsError) as error:
        check_notebook_parameters(FakeShell(DECLARED, injected))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_notebook_takes_its_parameters_as_declared_or_its_defaults():
    from partwhole.study.profiles import check_notebook_parameters

    good = '# Parameters\nprofile = "paper"\noverrides = "{\\"seed\\": 1}"\nresults_dir = "out"\nscale = 2\n'
    check_notebook_parameters(FakeShell(DECLARED, good))
    check_notebook_parameters(FakeShell(DECLARED))  # nothing injected (run by hand, or papermill without -p)
    check_notebook_parameters(FakeShell())


def test_papermill_run_directly_stops_at_the_check_cell_on_a_misspelt_parameter(tmp_path):
    import papermill

    from partwhole.core import artefacts

    with pytest.raises(papermill.PapermillExecutionError, match="unknown notebook parameter profle"):
        papermill.execute_notebook(artefacts.project_root() / "notebooks" / "08_tables.ipynb", tmp_path / "out.ipynb",
                                   parameters={"profle": "paper"}, cwd=artefacts.project_root() / "notebooks",
                                   progress_bar=False)
