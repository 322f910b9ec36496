"""Training and target building across torchrun's processes (one per GPU, or CPU processes with gloo): joining the
process group, and fastai's DistributedDataParallel set up so that several processes train as one does.

Every step's batch of batch_size images is cut into one share per rank, BatchNorm statistics are those of the whole
batch (torch's SyncBatchNorm on GPUs, `GlooSyncBatchNorm` on CPUs), gradients are averaged, so the steps, the
schedule, the losses and the weights are a one-process run's (up to float rounding); every rank validates on the
whole holdout. `train.fit` uses `distributed_training` whenever it runs under torchrun; the command line is in
`multigpu`.
"""
import contextlib
import os

import torch
import torch.distributed as dist
import torch.distributed.nn
from torch import nn


def setup():
    """Joins torchrun's process group (NCCL on GPUs, gloo on CPUs) and makes this rank's GPU the current one, so
    that the profile's device ("auto", i.e. "cuda") means it and the settings a checkpoint records stay those of
    a one-process run."""
    if "LOCAL_RANK" not in os.environ:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank0_first(make):
    """make() on rank 0 before the others, for what writes shared files (downloads, image caches)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        make()
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        make()


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm with the statistics of the whole batch across ranks, for CPUs (torch's SyncBatchNorm runs on GPUs
    only): the sums are all-reduced with torch.distributed.nn's differentiable all_reduce, so gradients flow to
    every rank's inputs as through one batch."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        local = torch.stack([x.sum(dims), (x * x).sum(dims)])
        count = x.numel() / x.shape[1] * dist.get_world_size()
        total = torch.distributed.nn.all_reduce(local)
        mean, var = total[0] / count, total[1] / count - (total[0] / count) ** 2
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        shape = (1, -1, 1, 1)
        normalised = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return normalised * self.weight.view(shape) + self.bias.view(shape)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        for parent in list(module.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.BatchNorm2d) and not isinstance(child, cls):
                    synced = cls(child.num_features, child.eps, child.momentum)
                    # the same parameters and buffers, not copies: the optimiser already holds them
                    synced.weight, synced.bias = child.weight, child.bias
                    synced.running_mean, synced.running_var = child.running_mean, child.running_var
                    synced.num_batches_tracked = child.num_batches_tracked
                    setattr(parent, name, synced)
        return module


@contextlib.contextmanager
def distributed_training(learn):
    """Train `learn` with DistributedDataParallel across torchrun's ranks, as one process would (see the module's
    docstring)."""
    from fastai.callback.progress import ProgressCallback
    from fastai.distributed import DistributedDL, DistributedTrainer

    class ShardedDL(DistributedDL):
        def _broadcast(self, t, rank):  # fastai's puts the order on a GPU, which gloo cannot take
            t = torch.tensor(t, dtype=torch.long, device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.broadcast(t, rank)
            return t.cpu().tolist()

        def __len__(self):
            return len(self.dl)

        def get_idxs(self):
            """Rank r takes the r-th share of each batch of the one-process order."""
            order, batch = self._broadcast(list(self.dl.get_idxs()), 0), self.dl.bs
            share = batch // self.world_size
            steps = len(order) // batch if self.dl.drop_last else -(-len(order) // batch)
            self.n = self.n_padded = len(order)
            return [i for step in range(steps)
                    for i in order[step * batch + self.rank * share : step * batch + (self.rank + 1) * share]]

        def create_batches(self, samps):
            self.dl.bs = self.dl.bs // self.world_size  # each rank's share of a step's batch
            try:
                yield from self.dl.create_batches(samps)
            finally:
                self.dl.bs *= self.world_size

    class Trainer(DistributedTrainer):
        def before_fit(self):
            if dist.get_backend() == "gloo":  # torch's SyncBatchNorm needs GPUs
                self.learn.model, self.sync_bn = GlooSyncBatchNorm.convert(self.learn.model), False
            super().before_fit()

        def _wrap_dl(self, dl):  # only the training data are shared out; every rank validates on all of it
            return dl if dl is not self.old_dls[0] or isinstance(dl, DistributedDL) else ShardedDL(dl)

    trainer = Trainer(sync_bn=True, cpu=dist.get_backend() == "gloo")  # accelerate's multi-CPU mode needs cpu=True
    learn.add_cb(trainer)
    if dist.get_rank():
        learn.remove_cb(ProgressCallback)
    try:
        yield learn
    finally:
        learn.remove_cb(trainer)
