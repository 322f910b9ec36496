"""Table 4's reference: the fastai Imagenette leaderboard entries the paper quotes, trained from random weights.

The paper names the architecture XResNet50; the three 5-epoch entries whose numbers it quotes (87.43% at 128 px,
86.76% at 192 px, 86.85% at 256 px) trained fastai's `xse_resnext50` with Mish activations, simple self-attention
(sa=True), max-pooling in the strided shortcuts (pool=MaxPool) and every max-pool replaced by a MaxBlurPool (kornia's
`MaxBlurPool2D(3)`, as the entries used it), Ranger (lr 8e-3, mom 0.95, sqr_mom 0.99, eps 1e-6),
weight decay 1e-2, fastai's flat-then-cosine schedule and label-smoothing cross-entropy. Their data pipelines
differ by size: at 128 px batch 32 and a plain Resize, at 192 and 256 px batch 64 and RandomResizedCrop(size,
min_scale=0.35); a horizontal flip and ImageNet normalisation for all. Everything is fastai's and kornia's own.

Data: the study's image folders; the network trains on the same 80% of train as every other run and is scored
on the 20% holdout and the val folder (the leaderboard trains on all of train and scores on val).
"""
import os
from functools import partial

import numpy as np
from fastai.callback.schedule import fit_flat_cos  # noqa: F401  (adds Learner.fit_flat_cos)
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import IndexSplitter, Normalize, parent_label
from fastai.layers import MaxPool, Mish
from fastai.learner import Learner
from fastai.losses import LabelSmoothingCrossEntropy
from fastai.metrics import accuracy
from fastai.optimizer import ranger
from fastai.torch_core import set_seed
from fastai.vision.augment import FlipItem, RandomResizedCrop, Resize
from fastai.vision.core import imagenet_stats
from fastai.vision.data import ImageBlock
from fastai.vision.models import xresnet as fastai_xresnet
from fastai.vision.models.xresnet import XResNet
import torch.nn.functional as F
from kornia.filters import MaxBlurPool2D
from kornia.geometry.transform import pyrdown
from torch import nn

from ..core.timing import announce
from ..datasets.data import ImageSet
from ..method.train import EpochHistory, SeedEachEpoch, confusion

# imagenette/2020-01-train.md: --lr 8e-3 --sqrmom 0.99 --mom 0.95 --eps 1e-6 --opt ranger --sa 1 --pool MaxPool
ARCHITECTURE = "xse_resnext50"  # the entries' (the paper's table says XResNet50)
LR, WD = 8e-3, 1e-2  # the 192 and 256 px entries' weight decay; the 128 px entry's was 1e-4 (profile.xresnet_wds)
OPTIMIZER = partial(ranger, mom=0.95, sqr_mom=0.99, eps=1e-6)
MIN_SCALE = 0.35
PAPER_SIZES = (128, 192, 256)  # Table 4's rows, in the order of the profile's xresnet_sizes


class MaxBlurPool2020(nn.Module):
    """kornia's MaxBlurPool2d(3, True) as the entries ran it (kornia 0.2-0.4, until its 2021 rewrite): a 3 x 3
    max-pool of stride 1, then pyrdown (a 5 x 5 Gaussian blur with reflect padding, then bilinear x 0.5)."""

    def forward(self, x):
        return pyrdown(F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True))


POOLS = {"kornia2020": MaxBlurPool2020, "kornia": lambda: MaxBlurPool2D(3)}  # kornia's since 2021: 2 x 2 max-pool,
# then a 3 x 3 binomial stride-2 convolution


def build(n_classes: int = 10, architecture: str = ARCHITECTURE, widen: float = 1.0, pool: str = "kornia") -> XResNet:
    """The entries' network (Mish, self-attention, max-pooling shortcuts, every max-pool a MaxBlurPool: the entries'
    own, kornia 2020's, or kornia's current one) in one of fastai's xresnet family (`xresnet18` ... `xse_resnext50`),
    its block widths scaled by `widen`."""
    model = getattr(fastai_xresnet, architecture)(n_out=n_classes, act_cls=Mish, sa=True, pool=MaxPool, widen=widen)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, POOLS[pool]())
    return model


def dataloaders(train: ImageSet, fit_idx: np.ndarray, holdout_idx: np.ndarray, size: int, batch_size: int,
                device: str, random_crop: bool = True, normalize: bool = True) -> DataLoaders:
    """The recipe's data pipeline on the `fit_idx` images of the train folder (the `holdout_idx` ones are its
    validation set): random resized crops, or a plain resize as the 128 px entry; ImageNet normalisation with
    `normalize` (the entries had none)."""
    crop = RandomResizedCrop(size, min_scale=MIN_SCALE) if random_crop else Resize(size)
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=list(train.classes))),
        get_y=parent_label,
        splitter=IndexSplitter(np.arange(len(fit_idx), len(fit_idx) + len(holdout_idx))),
        item_tfms=[crop, FlipItem(0.5)],
        batch_tfms=[Normalize.from_stats(*imagenet_stats)] if normalize else [],
    )
    # a batch never larger than the fit set: fastai drops the last incomplete batch
    batch_size = min(batch_size, len(fit_idx))
    # with a GPU, decoding the images is the bottleneck; on a CPU, workers would take cores from training
    workers = 0 if device == "cpu" else min(8, os.cpu_count() or 1)
    items = [train.paths[i] for i in np.concatenate([fit_idx, holdout_idx])]
    return block.dataloaders(items, bs=batch_size, device=device, num_workers=workers)


def train(train: ImageSet, fit_idx: np.ndarray, holdout_idx: np.ndarray, val: ImageSet, size: int, batch_size: int,
          epochs: int, seed: int, device: str, random_crop: bool = True, architecture: str = ARCHITECTURE,
          widen: float = 1.0, wd: float = WD, normalize: bool = True,
          pool: str = "kornia") -> tuple[Learner, dict, dict]:
    """Train the recipe from random weights on the `fit_idx` images; returns the learner, accuracy on the holdout
    and on the val folder (the validation crop: resize, then centre crop), and the per-epoch history. `wd`,
    `normalize`, `pool`: the profile's xresnet_wds (per size), xresnet_normalize and xresnet_pool (the leaderboard's
    in the paper profile); without them, weight decay 1e-2, ImageNet normalisation and kornia's current pool."""
    set_seed(seed, reproducible=True)
    dls = dataloaders(train, fit_idx, holdout_idx, size, batch_size, device, random_crop, normalize)
    learn = Learner(dls, build(len(train.classes), architecture, widen, pool), opt_func=OPTIMIZER,
                    loss_func=LabelSmoothingCrossEntropy(), metrics=accuracy)
    announce(learn, epochs, f"{architecture} at {size} px")
    history = {}
    learn.fit_flat_cos(epochs, LR, wd=wd, cbs=[SeedEachEpoch(seed), EpochHistory(history)])
    with learn.no_bar():
        probabilities, labels = learn.get_preds(dl=dls.test_dl(list(val.paths), with_labels=True))
    correct = probabilities.argmax(dim=1) == labels
    scores = {
        "holdout": float(learn.validate()[1]),
        "val": float(correct.float().mean()),
        "val_by_class": [float(correct[labels == c].float().mean()) for c in range(len(train.classes))],
        "val_confusion": confusion(labels, probabilities),
    }
    return learn, scores, history
