"""The CPU check's arithmetic and bookkeeping: each timed run starts from the prepared state, busy processes run
beside the busy runs only, and the ratio and verdict are those of the medians."""
import json

from partwhole.scale import busy_machine


def test_busy_runs_have_busy_processes_beside_them_and_the_ratio_is_of_the_medians(tmp_path, monkeypatch):
    calls, alive = [], []

    def fake_run_study(profile, overrides, results_dir, runs_dir, notebooks):
        if results_dir.parent.name == "prepared":
            (runs_dir / "checkpoints").mkdir(parents=True)
            results_dir.mkdir(parents=True)
            return {}
        assert not (runs_dir / "finished-here").exists()  # a fresh copy of the prepared state every time
        (runs_dir / "finished-here").write_text("")
        calls.append(notebooks)
        busy = any(process.poll() is None for process in alive)
        return {notebooks[0]: 30.0 if busy else 20.0}

    def started(count):
        processes = real_busy(count)
        alive.extend(processes)
        return processes

    real_busy = busy_machine.busy_processes
    monkeypatch.setattr(busy_machine, "run_study", fake_run_study)
    monkeypatch.setattr(busy_machine, "busy_processes", started)
    out = tmp_path / "check.json"
    assert busy_machine.main(["--notebook", "04_ablations.ipynb", "--repeats", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert calls == [("04_ablations.ipynb",)] * 4
    assert (record["quiet_s"], record["busy_s"], record["ratio"], record["verdict"]) == ([20.0] * 2, [30.0] * 2, 1.5,
                                                                                          "met")
    assert len(alive) == 2 and all(process.poll() is not None for process in alive)  # stopped after each busy run


def test_bad_arguments_are_refused_before_anything_runs(capsys):
    assert busy_machine.main(["--notebook", "08_tables.ipynb"]) == 2
    assert busy_machine.main(["--repeats", "0"]) == 2
    assert "--notebook" in capsys.readouterr().err
