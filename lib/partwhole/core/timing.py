"""What a training run will cost on this device, measured before it starts: a few steps timed, extrapolated."""
import copy
import time

import torch

from .devices import synchronize


def seconds_per_training_image(model: torch.nn.Module, loss, inputs: torch.Tensor, targets: torch.Tensor,
                               repeats: int = 2, optimizer: torch.optim.Optimizer | None = None) -> float:
    """Forward, backward and an optimiser step on one batch, timed after a warm-up step, per image. Without
    `optimizer` the model's weights do not change (SGD at a zero learning rate)."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.0)

    def step():
        optimizer.zero_grad()
        loss(model(inputs), targets).backward()
        optimizer.step()
        synchronize(inputs.device)

    step()  # warm-up: allocations, kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats / len(inputs)


def estimate_fit_seconds(learn, epochs: int) -> float:
    """A few steps on a copy of the learner's model and its first batch (the run itself is untouched), extrapolated to
    `epochs` epochs, validation included at the same cost per image (an overestimate: it needs no backward)."""
    # plain tensors, as fastai's CastToTensor callback gives the model (its subclasses break some losses)
    x, y = [t.as_subclass(torch.Tensor).to(learn.dls.device) for t in learn.dls.train.one_batch()]
    # copies on the data's device: the learner moves its model and loss there only when it fits
    model = copy.deepcopy(learn.model).to(learn.dls.device).train()
    loss = copy.deepcopy(learn.loss_func)
    if isinstance(loss, torch.nn.Module):  # a loss with buffers (the level weights)
        loss.to(learn.dls.device)
    per_image = seconds_per_training_image(model, loss, x, y)
    return per_image * epochs * (len(learn.dls.train.dataset) + len(learn.dls.valid.dataset))


def announce(learn, epochs: int, what: str) -> float:
    """Print a training run's estimated time before it starts; returns it."""
    seconds = estimate_fit_seconds(learn, epochs)
    print(f"{what}: {epochs} epochs on {learn.dls.device}, about {format_seconds(seconds)} (timed on a few steps)",
          flush=True)
    return seconds


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "not timed here"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
