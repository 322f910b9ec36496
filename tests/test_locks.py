"""One run at a time in a runs folder: a lock naming its holder, cleared when the holder is gone."""
import json
import os
import socket
import subprocess
import sys

import pytest

from partwhole.core import artefacts
from partwhole.core.artefacts import FolderBusy, exclusive
from partwhole.study.study import Study


def foreign_lock(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": socket.gethostname(), "command": "python -m partwhole.workflow.runner", "what": "pretraining",
              "started": "2026-01-01 00:00:00 UTC", "token": "another-run"}
    (folder / artefacts.LOCK_NAME).write_text(json.dumps(holder))


def test_a_live_holder_is_named_and_the_second_run_refused(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        foreign_lock(tmp_path, other.pid)
        with pytest.raises(FolderBusy) as error:
            with exclusive(tmp_path, "building targets"):
                pass
        message = str(error.value)
        assert f"pid {other.pid}" in message and "partwhole.workflow.runner" in message and "pretraining" in message
        assert "\n" not in message
        with pytest.raises(FolderBusy):  # the study's own steps take the same lock
            Study("embedded", {"train_per_class": 1, "val_per_class": 1}, runs_dir=tmp_path,
                  results_dir=tmp_path / "results").images("train")
    finally:
        other.kill()
        other.wait()


def test_a_lock_whose_holder_has_ended_is_cleared(tmp_path, capsys):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    foreign_lock(tmp_path, ended.pid)
    with exclusive(tmp_path, "building targets"):
        holder = json.loads((tmp_path / artefacts.LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["what"] == "building targets"
    assert "has ended; lock cleared" in capsys.readouterr().out
    assert not (tmp_path / artefacts.LOCK_NAME).exists()  # released at the end of the block


def test_the_holder_nests_and_its_child_processes_share_the_lock(tmp_path):
    with exclusive(tmp_path, "running the study"):
        with exclusive(tmp_path, "building targets"):  # the same run, a step inside it
            pass
        holder = json.loads((tmp_path / artefacts.LOCK_NAME).read_text())
        # what the runner's notebook kernels inherit, and what makes them share the lock
        assert os.environ[artefacts.HELD_LOCK] == holder["token"] and holder["what"] == "running the study"
        del os.environ[artefacts.HELD_LOCK]  # a process of another run, while this one is alive
        try:
            with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
                with exclusive(tmp_path, "building targets"):
                    pass
        finally:
            os.environ[artefacts.HELD_LOCK] = holder["token"]
    assert not (tmp_path / artefacts.LOCK_NAME).exists() and artefacts.HELD_LOCK not in os.environ


@pytest.mark.parametrize("content", ["", "{}", "[]", '"locked"', "3", '{"pid": 1}', '{"pid": 1, "token": null}',
                                     '{"pid": 1, "token": ""}'])
def test_a_lock_that_names_no_holder_is_refused_naming_the_fix(tmp_path, monkeypatch, content):
    monkeypatch.delenv(artefacts.HELD_LOCK, raising=False)  # no token of ours: a null one must not match it
    (tmp_path / artefacts.LOCK_NAME).write_text(content)
    with pytest.raises(FolderBusy, match="is not a lock this study wrote .*delete it"):
        with exclusive(tmp_path, "building targets"):
            pass
    assert (tmp_path / artefacts.LOCK_NAME).read_text() == content  # left for a person to look at


def test_a_lock_of_another_host_is_never_taken_for_stale(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    foreign_lock(tmp_path, ended.pid)  # a pid that has ended here may be alive on the other host
    holder = json.loads((tmp_path / artefacts.LOCK_NAME).read_text()) | {"host": "another-machine"}
    (tmp_path / artefacts.LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(FolderBusy, match="another-machine"):
        with exclusive(tmp_path, "building targets"):
            pass
