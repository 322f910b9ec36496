"""Training with fastai: distillation pretraining, then a linear probe on the frozen top level.

Both phases use Lion (betas 0.95, 0.98) through fastai's OptimWrapper, with one of two schedules:

- "reference", the authors': torch's OneCycleLR with its defaults sized for 2,000 epochs of 45,000 images (a CIFAR
  leftover), stepped once per batch of the real run, so the learning rate stays near max_lr / 25 (0.04 x max_lr
  through epoch 100 of Imagenette) and Lion's first beta near 0.95, as in the runs behind the paper's tables;
- "one_cycle": fastai's one-cycle over the actual run (peaking 25x higher), the first beta held at the profile's.

The probe's backbone is frozen, in eval mode and sees no augmentation, so its top-level features are
computed once and the head is trained on them: the same model as `model.Classifier`, epochs for free.

Speed (all off in the embedded profile): bfloat16 autocast through fastai's MixedPrecision, channels-last
batches through fastai's ChannelsLast, torch.compile in place; under torchrun, several GPUs through fastai's
DistributedDataParallel support (`partwhole.scale.multigpu`).
"""
import contextlib
import dataclasses
import math
import random
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision  # noqa: F401  (adds Learner.to_bf16)
from fastai.learner import Learner, Recorder
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import OptimWrapper
from fastai.torch_core import num_distrib, rank_distrib, set_seed
from fastai.callback.schedule import ParamScheduler, combined_cos, fit_one_cycle  # noqa: F401  (adds Learner.fit_one_cycle)
from lion_pytorch import Lion
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..core.artefacts import atomic_write, check_settings, load_torch
from ..core.devices import frozen_on
from ..core.distributed import distributed_training
from .model import Agglomerator, AgglomeratorConfig, Classifier, Distiller, ProbeHead, top_level_features
from .speedups import ForeachLion, checkpoint_iterations

if TYPE_CHECKING:  # a type only: the profile is read here, never made, and the settings sit above the method
    from ..study.profiles import Profile

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


def to_model_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W), ImageNet-normalised (no augmentation, as in the paper)."""
    x = torch.from_numpy(np.array(pixels)).movedim(-1, -3).float().div_(255)  # a copy: the cache is read-only
    return (x - _MEAN) / _STD


class PixelsWith(torch.utils.data.Dataset):
    """Images (from the uint8 cache) paired with per-image targets, restricted to `indices`."""

    def __init__(self, pixels: np.ndarray, targets, indices: np.ndarray):
        self.pixels, self.targets, self.indices = pixels, targets, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = self.indices[i]
        return to_model_input(self.pixels[j]), torch.from_numpy(np.array(self.targets[j], dtype=np.float32))  # a copy


class LevelWeightedMSE(nn.Module):
    """Paper Eq. 1-2: per-level MSE, weighted (the paper's alphas: 0.1, 0.2, 0.7 for levels 0, 1, 2; the profile's
    `level_weights`) and divided by the weights' sum."""

    def __init__(self, weights):
        super().__init__()
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def forward(self, predicted, target):  # (b, n, L, d) each
        per_level = ((predicted.float() - target.float()) ** 2).mean(dim=(0, 1, 3))
        return (self.weights * per_level).sum() / self.weights.sum()


@torch.no_grad()
def held_out_mse(model: nn.Module, batches) -> list[float]:
    """The per-level MSE (Eq. 1) of a Distiller's predictions over every image of `batches` (images, targets): the
    loss's three terms, each level apart (LevelWeightedMSE weights them into one number)."""
    model.eval()
    sums, count = 0, 0
    for images, targets in batches:
        sums = sums + ((model(images).float() - targets.float()) ** 2).mean(dim=(1, 3)).sum(dim=0).cpu()
        count += len(images)
    return (sums / count).tolist()


def mean_target_mse(targets, fit_idx, holdout_idx, chunk: int = 256) -> list[float]:
    """The per-level MSE on the holdout images of a student that ignores its image: at every column and level, the
    fit images' mean target. A held-out loss near it means the student's predictions are no closer to its targets
    than that constant (what its levels hold for a probe is another matter: notebook 07's shuffled masks reach it
    and still probe well above chance). Read in chunks: the paper profile's targets do not fit in memory."""
    def batches(indices):
        indices = np.sort(indices)
        for start in range(0, len(indices), chunk):
            yield torch.from_numpy(np.asarray(targets[indices[start : start + chunk]], dtype=np.float32))

    mean = sum(batch.sum(dim=0) for batch in batches(fit_idx)) / len(fit_idx)  # (columns, levels, dims)
    sums = sum(((batch - mean) ** 2).mean(dim=(1, 3)).sum(dim=0) for batch in batches(holdout_idx))
    return (sums / len(holdout_idx)).tolist()


def lion(betas, foreach: bool = False) -> partial:
    return partial(OptimWrapper, opt=ForeachLion if foreach else Lion, betas=tuple(betas))


def loaders(train, valid, batch_size: int, device: str, num_workers: int = 0) -> DataLoaders:
    return DataLoaders(
        DataLoader(train, bs=batch_size, shuffle=True, drop_last=len(train) > batch_size, num_workers=num_workers),
        DataLoader(valid, bs=batch_size, num_workers=num_workers),
        device=device,
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and random draws: (seed, epoch) alone."""
    return seed * 100_003 + epoch


class SeedEachEpoch(Callback):
    """Each epoch's shuffle and random draws depend on (seed, epoch) only, so a resumed run repeats them exactly."""

    def __init__(self, seed: int):
        self.seed = seed

    def before_epoch(self):
        seed = epoch_seed(self.seed, self.epoch)
        train = getattr(self.dls.train, "dl", self.dls.train)  # under torchrun, the DataLoader inside DistributedDL
        train.rng = random.Random(seed)  # fastai's DataLoader shuffles with its own rng
        torch.manual_seed(seed)


class EpochHistory(Callback):
    """Keeps the per-epoch history; with a `checkpoint` path, also saves model, optimiser state, epoch and
    history there after every epoch (atomically), to resume from.

    The train loss kept is the epoch's plain mean, not fastai's smoothed loss, whose state would not survive
    a resume."""

    order = Recorder.order + 1  # after the recorder has logged the epoch

    def __init__(self, history: dict, start_epoch: int = 0, checkpoint: Path | None = None, settings: dict | None = None):
        self.history, self.start_epoch, self.checkpoint, self.settings = history, start_epoch, checkpoint, settings

    def before_epoch(self):
        self.loss_sum, self.samples = 0.0, 0

    def after_batch(self):
        if self.training:
            self.loss_sum += float(self.loss.detach()) * len(self.yb[0])
            self.samples += len(self.yb[0])

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # an epoch skipped on resume: already in the history
            return
        loss_sum, samples = self.loss_sum, self.samples
        if num_distrib() > 1:  # every rank trained on a share of each batch: the epoch's mean over all of them
            totals = torch.tensor([loss_sum, samples], dtype=torch.float64, device=self.dls.device)
            torch.distributed.all_reduce(totals)
            loss_sum, samples = totals.tolist()
        names = self.recorder.metric_names[1:-1]  # without "epoch" and "time"
        values = [loss_sum / samples] + list(self.recorder.log[2:-1])  # train, valid, metrics
        for name, value in zip(names, values):
            self.history.setdefault(name, []).append(float(value))
        if self.checkpoint is not None and rank_distrib() == 0:  # under torchrun, rank 0 alone writes
            model = getattr(self.learn.model, "module", self.learn.model)  # unwrapped from DistributedDataParallel
            state = {"settings": self.settings, "epoch": self.epoch, "history": self.history,
                     "model": model.state_dict(), "opt": self.learn.opt.state_dict()}
            with atomic_write(self.checkpoint) as tmp:
                torch.save(state, tmp)


class NonFiniteLoss(RuntimeError):
    """A training loss that turned NaN or infinite: the run stops there, before anything is written from it."""


PHASES = {"Distiller": "distillation pretraining", "ProbeHead": "the probe"}  # by the model being trained


class StopOnNonFiniteLoss(Callback):
    """Stops a run at the first step whose loss is not finite, naming the step, the phase and the likely cause: the
    batch's inputs or targets hold NaN or infinity, or else the learning rate is too high for the model."""

    order = Recorder.order - 1  # before the recorder logs a NaN

    def __init__(self, lr: float):
        self.lr = lr

    def after_loss(self):
        if not self.training or torch.isfinite(self.loss.detach()).all():
            return
        model = getattr(self.learn.model, "module", self.learn.model)
        phase = PHASES.get(type(model).__name__, f"training {type(model).__name__}")
        bad = [name for name, batch in (("inputs", self.xb), ("targets", self.yb))
               if any(t.is_floating_point() and not torch.isfinite(t).all() for t in batch)]
        cause = (f"the batch's {' and '.join(bad)} hold NaN or infinity: rebuild them" if bad else
                 f"the learning rate is likely too high (lr={self.lr:g}): run with a smaller one")
        raise NonFiniteLoss(f"{phase}: the loss became {float(self.loss.detach()):g} at epoch {self.epoch}, step "
                            f"{self.iter} of {self.n_iter}; {cause}. Nothing from this epoch was kept.")


REFERENCE_EPOCHS, REFERENCE_IMAGES = 2000, 45000  # what the authors' one-cycle is sized for (CIFAR's train set)


def _anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def reference_one_cycle(max_lr: float, batch_size: int):
    """The authors' schedule as functions of the step: torch's OneCycleLR(max_lr, epochs=2000,
    steps_per_epoch=45000 // batch_size) with its defaults (pct_start 0.3, cosine, div_factor 25, final_div_factor
    1e4, cycle_momentum from 0.95 down to 0.85 and back, on Lion's first beta). Returns (lr(step), beta1(step))."""
    total = REFERENCE_EPOCHS * (REFERENCE_IMAGES // batch_size)
    warmup_end, last = 0.3 * total - 1, total - 1
    initial, final = max_lr / 25, max_lr / 25 / 1e4

    def lr(step):
        if step <= warmup_end:
            return _anneal(initial, max_lr, step / warmup_end)
        return _anneal(max_lr, final, (step - warmup_end) / (last - warmup_end))

    def beta1(step):
        if step <= warmup_end:
            return _anneal(0.95, 0.85, step / warmup_end)
        return _anneal(0.85, 0.95, (step - warmup_end) / (last - warmup_end))

    return lr, beta1


def learning_rates(profile: "Profile", steps: int) -> list[float]:
    """The learning rate of each of a run's `steps` optimiser steps, as `fit` sets it on the profile's schedule."""
    if profile.schedule == "reference":
        lr, _ = reference_one_cycle(profile.lr, profile.batch_size)
        return [lr(step) for step in range(steps)]
    schedule = combined_cos(0.25, profile.lr / 25, profile.lr, profile.lr / 1e5)  # fastai's fit_one_cycle defaults
    return [float(schedule(step / steps)) for step in range(steps)]


def overfit_one_batch(profile: "Profile", images: torch.Tensor, targets: torch.Tensor, steps: int) -> list[float]:
    """A fresh student trained on one batch only, at the profile's learning rate, in a plain loop: the losses per
    step. A model and loss that can learn drive it towards zero; one that cannot (a bug) does not."""
    set_seed(profile.seed, reproducible=True)
    model = Distiller(Agglomerator(profile.agglomerator_config(target_dim=targets.shape[-1]))).to(images.device)
    optimizer = Lion(model.parameters(), lr=profile.lr, betas=tuple(profile.betas), weight_decay=0.0)
    loss_function, losses = LevelWeightedMSE(profile.level_weights).to(images.device), []
    for _ in range(steps):
        loss = loss_function(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def fit(learn: Learner, profile: "Profile", epochs: int, checkpoint: Path | None = None) -> dict[str, list[float]]:
    """Training on the profile's schedule; returns the per-epoch history (train_loss, valid_loss, metrics).

    With `checkpoint`, the state after every epoch is saved there, and a run finding one made with the same
    settings continues after its last complete epoch (a finished one just loads its result).
    """
    settings = profile.pretraining_settings() | {"epochs": epochs}  # a change of probe or baseline settings: resumed
    start, history = 0, {}
    if checkpoint is not None and Path(checkpoint).exists():
        start, history = _resume(learn, Path(checkpoint), settings)
    callbacks = [SeedEachEpoch(profile.seed), StopOnNonFiniteLoss(profile.lr),
                 EpochHistory(history, start, checkpoint, settings)]
    distributed = contextlib.nullcontext()
    if num_distrib() > 1:  # under torchrun: DistributedDataParallel, each rank a share of every step's batch
        distributed = distributed_training(learn)
    try:
        with distributed:
            if profile.schedule == "one_cycle":
                beta1 = profile.betas[0]
                learn.fit_one_cycle(epochs, profile.lr, wd=profile.wd, moms=(beta1, beta1, beta1), start_epoch=start,
                                    cbs=callbacks)
            else:
                lr, beta1 = reference_one_cycle(profile.lr, profile.batch_size)
                steps = epochs * len(learn.dls.train)  # fastai's schedules take the share of the run done
                scheduler = ParamScheduler({"lr": lambda done: lr(done * steps), "mom": lambda done: beta1(done * steps)})
                learn.fit(epochs, wd=profile.wd, start_epoch=start, cbs=[scheduler] + callbacks)
    except torch.OutOfMemoryError as error:
        raise RuntimeError(
            f"out of GPU memory at batch_size={profile.batch_size}: run again with --set batch_size="
            f"{max(1, profile.batch_size // 2)}" + (" (a new run: the batch size is part of the settings)" if checkpoint else "")
        ) from error
    return history


def _resume(learn: Learner, path: Path, settings: dict) -> tuple[int, dict]:
    fix = "Delete it to start the run afresh."
    saved = load_torch(path, "training state", fix)  # our own file; holds the optimiser state
    check_settings(path, saved["settings"], settings, "training state", "Delete it to start afresh, or run with its "
                   "settings to resume it.")
    learn.model.load_state_dict(saved["model"])
    # on the data's device first: the optimiser's state is loaded onto its parameters' device, and fastai's later
    # move of the model would leave that state behind
    learn.model.to(learn.dls.device)
    learn.create_opt()
    learn.opt.load_state_dict(saved["opt"])
    return saved["epoch"] + 1, saved["history"]


def pretraining_learner(profile: "Profile", pixels, targets, fit_idx, holdout_idx, device: str) -> Learner:
    """Distillation: the Agglomerator's levels regress the teacher's mask embeddings (train split only, no labels).
    The learner's model is a `Distiller`, freshly initialised from the profile's seed."""
    set_seed(profile.seed, reproducible=True)
    cfg = profile.agglomerator_config(target_dim=targets.shape[-1])
    model = Distiller(Agglomerator(cfg))
    dls = loaders(PixelsWith(pixels, targets, fit_idx), PixelsWith(pixels, targets, holdout_idx), profile.batch_size, device)
    learn = Learner(dls, model, loss_func=LevelWeightedMSE(profile.level_weights),
                    opt_func=lion(profile.betas, profile.foreach_optimizer))
    return speed_up(learn, profile)


def speed_up(learn: Learner, profile: "Profile") -> Learner:
    """The profile's speed options on a learner: bfloat16 autocast (fastai's MixedPrecision, which autocasts on
    CUDA only), channels-last model and batches (fastai's ChannelsLast), the Agglomerator's iterations recomputed in
    backward (`checkpoint_iterations`), torch.compile of the model in place (state dicts keep their keys, so
    checkpoints stay interchangeable)."""
    if profile.precision == "bfloat16":
        learn.to_bf16()
    if profile.channels_last:
        learn.add_cb(ChannelsLast())
    if profile.checkpoint_iterations:
        checkpoint_iterations(learn.model.backbone)
    if profile.compile:
        learn.model.compile()
    return learn


def pretrain(profile: "Profile", pixels, targets, fit_idx, holdout_idx, device: str,
             checkpoint: Path | None = None) -> tuple[Learner, dict]:
    """pretraining_learner + fit: the trained learner and the per-epoch losses. With `checkpoint`, an
    interrupted run resumes after its last complete epoch and ends exactly as an uninterrupted one."""
    learn = pretraining_learner(profile, pixels, targets, fit_idx, holdout_idx, device)
    return learn, fit(learn, profile, profile.pretrain_epochs, checkpoint)


@torch.inference_mode()
def extract_features(backbone: Agglomerator, pixels, indices, batch_size: int, device: str) -> torch.Tensor:
    """Top-level features (N, columns, dim) of a frozen backbone, as the probe head sees them."""
    backbone = frozen_on(backbone, device)
    out = []
    for start in range(0, len(indices), batch_size):
        batch = to_model_input(pixels[indices[start : start + batch_size]]).to(device)
        out.append(top_level_features(backbone(batch)).float().cpu())
    return torch.cat(out)


def probe_features(profile: "Profile", features: dict, n_classes: int, device: str) -> tuple[Learner, dict, dict]:
    """The probe's head trained on frozen features computed beforehand: {split: (features (N, columns, dim),
    labels (N,))} for the splits of `probe`. Also serves features that are not an Agglomerator's (one column)."""
    set_seed(profile.seed, reproducible=True)
    n_columns, dim = features["fit"][0].shape[1:]
    return fit_head(profile, features, ProbeHead(n_columns, dim, n_classes), device)


def confusion(labels: torch.Tensor, scores: torch.Tensor) -> list[list[int]]:
    """Counts of (true class, predicted class) over the images, the prediction the highest-scoring class."""
    n = scores.shape[1]
    counts = torch.bincount(labels.long() * n + scores.argmax(dim=1), minlength=n * n)
    return counts.reshape(n, n).tolist()


def fit_head(profile: "Profile", features: dict, head: nn.Module, device: str) -> tuple[Learner, dict, dict]:
    """A head trained on "fit" features for profile.probe_epochs with the probe's learning rate and weight decay
    (validated on "holdout"), then scored on "holdout" and "val": {split: (features, labels)}. Returns the learner,
    the accuracies ({"holdout", "val", "val_by_class"}) and the history."""
    profile = dataclasses.replace(profile, lr=profile.probe_lr or profile.lr,
                                  wd=profile.wd if profile.probe_wd is None else profile.probe_wd)
    datasets = {name: torch.utils.data.TensorDataset(f, y) for name, (f, y) in features.items()}
    dls = loaders(datasets["fit"], datasets["holdout"], profile.batch_size, device)
    learn = Learner(dls, head, loss_func=CrossEntropyLossFlat(), metrics=accuracy, opt_func=lion(profile.betas))
    history = fit(learn, profile, profile.probe_epochs)
    scores = {}
    for name in ("holdout", "val"):
        with learn.no_bar():
            probabilities, labels = learn.get_preds(dl=DataLoader(datasets[name], bs=profile.batch_size, device=device))
        correct = probabilities.argmax(dim=1) == labels
        scores[name] = float(correct.float().mean())
    # per class on val: a class pair's accuracy (classes that share parts, say) is the mean of its two (val is balanced)
    scores["val_by_class"] = [float(correct[labels == c].float().mean()) if (labels == c).any() else None
                              for c in range(probabilities.shape[1])]
    scores["val_confusion"] = confusion(labels, probabilities)
    return learn, scores, history


def save_checkpoint(model: nn.Module, cfg: AgglomeratorConfig, path: Path):
    with atomic_write(path) as tmp:
        torch.save({"config": dataclasses.asdict(cfg), "state_dict": model.state_dict()}, tmp)


def load_checkpoint(model: nn.Module, cfg: AgglomeratorConfig, path: Path) -> nn.Module:
    """Load weights saved by save_checkpoint, refusing a checkpoint of another configuration."""
    fix = "Run the notebook that trains it again (delete the file first)."
    saved = load_torch(path, "checkpoint", fix)
    check_settings(path, saved["config"], dataclasses.asdict(cfg), "checkpoint", "Retrain it, or choose that "
                   "configuration.")
    model.load_state_dict(saved["state_dict"])
    return model


def classifier(backbone: Agglomerator, head: ProbeHead) -> Classifier:
    """The probed model in one module (backbone + trained head), for inference and checkpoints."""
    model = Classifier(backbone)
    model.head.load_state_dict(head.state_dict())
    return model.eval()
