"""Independent runs side by side: one worker process per CPU core, one thread per worker.

A training run of a model this small keeps a second thread poorly busy: the two threads wait on each other, and
while anything else runs on the machine they spin-wait for whole time slices (one run measured up to 10x slower).
Two runs of one thread each keep both cores busy (about 1.5x the throughput of one run on two threads) and share
the machine fairly with whatever else runs on it. Every run computes on one thread wherever it runs (the runner sets
one thread for the notebooks' kernels too), so a run's numbers do not depend on how many ran beside it.

On a GPU the runs go one after another in the calling process: side by side they would share its memory.
"""
import contextlib
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.learner import defaults
from fastcore.basics import noop


def cpu_cores() -> int:
    """The CPU cores this process may use (its affinity, where the system says: a container's share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(device: str) -> int:
    """How many runs go side by side on `device`: one per CPU core on a CPU, one on a GPU."""
    return cpu_cores() if device == "cpu" else 1


class _NoEpochTable(Callback):
    """A worker's learners print no epoch table (as the runner's executed copies show none): what a worker prints
    is the run's own lines, printed by the caller once the run has ended."""

    def before_fit(self):
        self.learn.logger = noop


def _start_worker():
    torch.set_num_threads(1)
    defaults.callbacks = [callback for callback in defaults.callbacks if callback is not ProgressCallback]
    defaults.callbacks.append(_NoEpochTable)


def _call_capturing(function, args, kwargs):
    """A call in a worker: (its result or the exception it raised, what it printed)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            return function(*args, **kwargs), None, printed.getvalue()
        except Exception as error:  # raised again in the caller, after what the run printed
            return None, error, printed.getvalue()


def side_by_side(calls: list, workers: int) -> list:
    """The results of `calls` (each `(function, args, kwargs)`, the function importable from a module), in their
    order, run by up to `workers` processes at once in the order given (so put the longest first). What each call
    printed is printed once it has ended, in the calls' order, so the output reads as if they had run one after
    another. With one worker, or one call, they run here, one after another.

    A call that raises stops the calls not yet started; its exception is raised here once the running ones end."""
    if workers <= 1 or len(calls) <= 1:
        return [function(*args, **kwargs) for function, args, kwargs in calls]
    context = multiprocessing.get_context("spawn")  # not fork: a forked torch can hang in its thread pools
    results = []
    with ProcessPoolExecutor(min(workers, len(calls)), mp_context=context, initializer=_start_worker) as pool:
        futures = [pool.submit(_call_capturing, function, args, kwargs) for function, args, kwargs in calls]
        for future in futures:
            result, error, printed = future.result()
            print(printed, end="", flush=True)
            if error is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                raise error
            results.append(result)
    return results
