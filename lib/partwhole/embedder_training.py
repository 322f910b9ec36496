"""The embedded stand-in for ImageNet supervision: the mask embedder trained with labels on the train split.

The paper's embedder, MaxViT-pico, was trained with labels on ImageNet, whose classes and training images
include Imagenette's: its features separate the classes before the student sees a single target. The embedded
profile has no pretrained weights anywhere, and a randomly initialised embedder gives targets with almost no
class information. So, when `embedder_training_epochs > 0`, the same timm architecture is first trained with
labels on the train split (never on val), and its weights are saved as a local timm checkpoint that
`MaskEmbedder` loads through timm's own pretrained-weights loader, which drops the classifier head.

The images go through the embedder's own eval transform (as the masked images will), plus a random horizontal
flip while training. The weights file is reused while the settings stored beside it match, else retrained.
"""
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (adds Learner.fit_one_cycle)
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from PIL import Image, ImageOps

from .artefacts import DamagedFile, SettingsMismatch, atomic_write, check_settings, load_torch, read_json, write_json
from .data import ImageSet
from .downloads import create_timm_model
from .profiles import Profile
from .train import loaders

LEARNING_RATE = 3e-3
BATCH_SIZE = 64
AUGMENTATION = "random horizontal flip"  # the generated classes (and Imagenette's) are mirror-invariant


def training_recipe(profile: Profile) -> dict | None:
    """How the embedder's weights were trained, for the targets manifest; None when it is used as timm gives it."""
    if profile.embedder_training_epochs == 0:
        return None
    return {
        "split": "train",
        "epochs": profile.embedder_training_epochs,
        "seed": profile.embedder_seed,
        "lr": LEARNING_RATE,
        "batch_size": BATCH_SIZE,
        "augmentation": AUGMENTATION,
    }


def checkpoint_path(checkpoint_dir: Path, profile: Profile) -> Path:
    recipe = training_recipe(profile)
    return Path(checkpoint_dir) / f"embedder-{profile.embedder}-{recipe['epochs']}ep-seed{recipe['seed']}.pt"


def report_path(checkpoint: Path) -> Path:
    """The settings the weights were trained with, their val accuracy and training time (JSON beside them)."""
    return Path(checkpoint).with_suffix(".json")


def training_report(checkpoint: Path) -> dict:
    return read_json(report_path(checkpoint), "embedder training report", "Delete it and its weights; they are trained "
                     "again.")


class LabelledImages(torch.utils.data.Dataset):
    """(transformed image, label) pairs from a uint8 image cache."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, transform, flip: bool):
        self.pixels, self.labels, self.transform, self.flip = pixels, labels, transform, flip

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = Image.fromarray(np.asarray(self.pixels[i]))
        if self.flip and torch.rand(()) < 0.5:  # torch's generator: seeded by set_seed
            image = ImageOps.mirror(image)
        return self.transform(image), int(self.labels[i])


def train_embedder(profile: Profile, train: tuple[ImageSet, np.ndarray], val: tuple[ImageSet, np.ndarray],
                   checkpoint_dir: Path, device: str) -> Path:
    """Train the profile's embedder with labels on `train` (unless a file with the same settings exists), and
    return its weights file. `train` and `val` are (images, uint8 pixels); val is only scored."""
    (train_images, train_pixels), (val_images, val_pixels) = train, val
    path = checkpoint_path(checkpoint_dir, profile)
    settings = json.loads(json.dumps({  # as it reads back from the file (tuples become lists)
        "embedder": profile.embedder,
        "pretrained": profile.embedder_pretrained,  # True: fine-tune the hub weights
        "kwargs": profile.embedder_kwargs,
        "data_config": profile.embedder_data_config,
        "recipe": training_recipe(profile),
        "classes": list(train_images.classes),
        "train_images": _digest(train_images),
    }))
    if path.exists() and report_path(path).exists():
        try:  # weights reused only when trained with these settings and readable; retrained otherwise (seeded)
            check_settings(path, training_report(path)["settings"], settings, "embedder weights", "")
            load_torch(path, "embedder weights", "", weights_only=True)
            return path
        except (SettingsMismatch, DamagedFile) as error:
            print(f"{str(error).rstrip('. ')}: training them again")

    set_seed(profile.embedder_seed, reproducible=True)
    model = create_timm_model(profile.embedder, profile.embedder_pretrained and not profile.random_weights,
                              num_classes=len(train_images.classes), **profile.embedder_kwargs)
    config = timm.data.resolve_model_data_config(model, args=dict(profile.embedder_data_config))
    transform = timm.data.create_transform(**config, is_training=False)  # what MaskEmbedder will apply
    dls = loaders(LabelledImages(train_pixels, train_images.labels, transform, flip=True),
                  LabelledImages(val_pixels, val_images.labels, transform, flip=False), BATCH_SIZE, device)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(profile.embedder_training_epochs, LEARNING_RATE)
    seconds = time.perf_counter() - start
    names = learn.recorder.metric_names[1:-1]  # train_loss, valid_loss, accuracy (without "epoch" and "time")
    history = {name: [float(row[i]) for row in learn.recorder.values] for i, name in enumerate(names)}

    with atomic_write(path) as tmp:
        torch.save(model.state_dict(), tmp)  # a plain state dict, head included: what timm loads as a checkpoint
    report = {"settings": settings, "val_accuracy": history["accuracy"][-1], "train_seconds": round(seconds, 1),
              "history": history}
    write_json(report_path(path), report)  # written last: a report vouches for complete weights
    return path


def _digest(images: ImageSet) -> str:
    """The training images (folder, names and classes) in one short string."""
    listing = json.dumps([images.root.name, images.relative_paths(), images.labels.tolist()])  # not where it lies
    return hashlib.sha256(listing.encode()).hexdigest()[:16]
