"""Batches that shrink when the GPU runs out of memory, instead of losing a long run."""
import warnings

import torch


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
