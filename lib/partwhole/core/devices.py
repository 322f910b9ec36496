"""The device, its precision, and batches that shrink when the GPU runs out of memory."""
import platform
import warnings

import torch

from .artefacts import SettingsError

PRECISIONS = ("float32", "bfloat16")


def resolve_device(name: str) -> str:
    """The profile's device as torch names it; SettingsError (one line) for a GPU this machine does not have."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            have = f"GPUs cuda:0 to cuda:{count - 1}" if count else "no GPU torch can use"
            raise SettingsError(f"device={name!r}: this machine has {have}; choose device='auto' or 'cpu'")
    return name


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def frozen_on(model: torch.nn.Module, device) -> torch.nn.Module:
    """`model` in eval mode on `device`, moved outside inference mode even when called inside it: parameters moved
    there would become inference tensors, and the model could never be trained again."""
    with torch.inference_mode(False):
        return model.eval().to(device)


def synchronize(device):
    """Wait for the device's queued work, so that a clock read after it times that work."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def autocast(precision: str, device) -> torch.autocast:
    """A (re-enterable) bfloat16 autocast context on `device` for precision="bfloat16", disabled for float32.
    On a CPU it is slower than float32: it is there to test bfloat16's numerics."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bfloat16")


class HalvingBatches:
    """Runs work in batches of `size`; on out-of-memory, halves the size (with a warning) and retries the batch.

    The smaller size is kept for later calls, so a long job settles on a size that fits.
    """

    def __init__(self, size: int, what: str):
        if size <= 0:
            raise ValueError(f"batch size for {what} must be positive, got {size}")
        self.size, self.what = size, what

    def map(self, run, n: int) -> list:
        """[run(start, stop) for consecutive batches covering range(n)]."""
        out, start = [], 0
        while start < n:
            stop = min(start + self.size, n)
            try:
                out.append(run(start, stop))
            except torch.OutOfMemoryError:
                if self.size == 1:
                    raise
                self.size //= 2
                torch.cuda.empty_cache()
                warnings.warn(f"out of GPU memory in {self.what}: batch size halved to {self.size} "
                              f"(set teacher_batch={self.size} to start there)")
                continue
            start = stop
        return out
