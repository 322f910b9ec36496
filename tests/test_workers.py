"""Runs side by side: worker processes of one thread each, results and output in the calls' order, errors raised
after the output of the run that failed, the runs folder's lock shared, a run's numbers the same wherever it ran."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from partwhole.core import workers
from partwhole.study.study import Study


def where_and_threads(delay: float, label: str) -> tuple:
    time.sleep(delay)
    print(f"{label} ran")
    return os.getpid(), torch.get_num_threads()


def fails(label: str):
    print(f"{label} printed this before failing")
    raise ValueError(f"{label} failed")


def tiny_training(seed: int) -> torch.Tensor:
    """A few optimiser steps of a small MLP: its weights depend on the reduction order, so on the threads."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(512, 256), torch.randn(512, 1)
    for _ in range(5):
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model[0].weight.detach()


def test_results_and_output_come_in_the_calls_order_from_one_thread_workers(capsys):
    # the first call ends last: its output still comes first
    calls = [(where_and_threads, (0.5, "first"), {}), (where_and_threads, (0.0, "second"), {}),
             (where_and_threads, (0.0, "third"), {})]
    results = workers.side_by_side(calls, workers=2)
    assert capsys.readouterr().out == "first ran\nsecond ran\nthird ran\n"
    pids = {pid for pid, _ in results}
    assert os.getpid() not in pids and len(pids) == 2  # two worker processes, not this one
    assert {threads for _, threads in results} == {1}


def test_one_worker_runs_the_calls_here_one_after_another():
    assert workers.side_by_side([(where_and_threads, (0, "a"), {})] * 2, workers=1)[0][0] == os.getpid()


def test_a_failing_run_is_raised_after_its_output(capsys):
    with pytest.raises(ValueError, match="second failed"):
        workers.side_by_side([(where_and_threads, (0, "first"), {}), (fails, ("second",), {})], workers=2)
    assert capsys.readouterr().out == "first ran\nsecond printed this before failing\n"


def test_a_run_computes_the_same_in_a_worker_as_in_a_one_thread_process(tmp_path):
    # a plain process of one thread, as the runner's notebook kernels are, with this process's environment (its CPU
    # code path variables: a process reads them when torch starts, and the workers inherit them too)
    out = tmp_path / "weights.pt"
    code = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_workers; "
            f"torch.save(test_workers.tiny_training(0), {str(out)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    same, other = workers.side_by_side([(tiny_training, (0,), {}), (tiny_training, (1,), {})], workers=2)
    assert torch.equal(torch.load(out), same)
    assert not torch.equal(same, other)  # the comparison can fail


def holds_the_lock(study: Study, seconds: float) -> str:
    with study.exclusive("a run that writes in the runs folder"):
        time.sleep(seconds)
    return study.profile.name


def test_the_runs_of_a_study_share_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "worker_count", lambda device: 2)
    study = Study("embedded", {"train_per_class": 2}, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    # both hold the lock at once (the workers start together): neither is refused as FolderBusy
    assert study.side_by_side([(holds_the_lock, dict(seconds=3.0))] * 2) == ["embedded"] * 2
    assert not (tmp_path / "runs" / "run.lock").exists()
