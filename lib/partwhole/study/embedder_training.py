"""The embedded profile's mask embedder: a tiny timm model trained with labels on generated scenes of its own.

The paper takes MaxViT-pico as given: trained with labels on ImageNet-1k, whose classes include Imagenette's. The
embedded profile downloads nothing, so its embedder is trained once, with labels, on generated scenes of the same
ten classes drawn apart from any study's (a scene seed of their own), and its weights are shipped in the package
(partwhole/weights/), as hub weights are given: every run of every seed embeds with the same file, whatever machine
it runs on. This module makes that file again:

    python -m partwhole.study.embedder_training            # the embedded profile's embedder, as shipped

Its report (JSON beside the weights) records the recipe, the accuracy on the embedder's own held-out scenes, the
training time, the device and the library versions. `MaskEmbedder` loads the weights without the classifier head
(`embedder.load_weights`), as timm's pretrained loader does for hub weights.
"""
import argparse
import dataclasses
import time
from dataclasses import dataclass
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

from ..core.artefacts import atomic_write, data_dir, read_json, sha256, write_json
from ..core.devices import resolve_device
from ..core.downloads import create_timm_model
from ..datasets import synthetic
from ..datasets.data import image_cache, list_images
from ..method.embedder import REMAKE_WEIGHTS, weights_path
from ..method.train import StopOnNonFiniteLoss, loaders
from .profiles import Profile, SettingsError, add_profile_arguments, get_profile, parse_overrides, refuse
from .results import provenance


@dataclass(frozen=True)
class Recipe:
    """How the shipped embedder is trained: on its own generated scenes (the profile's image size and scene style),
    with labels, fastai's one-cycle, and random horizontal flips (the generated classes are mirror-invariant)."""

    scene_seed: int = 1000  # apart from the study's dataset seeds (42 and on)
    train_per_class: int = 300
    val_per_class: int = 50
    epochs: int = 20  # 100% on its held-out scenes
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0  # the initial weights and the data order


def report_path(weights: Path) -> Path:
    """The recipe the weights were trained with, their accuracy and training time (JSON beside them)."""
    return Path(weights).with_suffix(".json")


def training_report(weights: Path) -> dict:
    return read_json(report_path(weights), "embedder training report", REMAKE_WEIGHTS)


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


def embedder_scenes(profile: Profile, recipe: Recipe) -> Path:
    """The embedder's own generated scenes (its scene seed, the profile's size and scene style)."""
    sizes = f"{recipe.train_per_class}x{recipe.val_per_class}"
    root = data_dir() / f"embedder-scenes-seed{recipe.scene_seed}-{profile.image_size}px-{sizes}-{profile.scene_key()}"
    return synthetic.generate(root, recipe.scene_seed, profile.image_size, recipe.train_per_class,
                              recipe.val_per_class, profile.scene_style())


def train(profile: Profile, recipe: Recipe, out: Path, device: str) -> dict:
    """Train the profile's embedder architecture with labels on its own scenes; write the weights to `out` and the
    report beside them; returns the report. `out` and its report are replaced only once the training has finished."""
    if recipe.epochs < 1:
        raise SettingsError(f"epochs={recipe.epochs}: the embedder's training takes at least 1 epoch")
    root = embedder_scenes(profile, recipe)
    cache = data_dir() / "embedder-scenes-cache"
    train_images, train_pixels = image_cache(list_images(root, "train"), profile.image_size, cache / root.name)
    val_images, val_pixels = image_cache(list_images(root, "val", train_images.classes), profile.image_size,
                                         cache / root.name)
    set_seed(recipe.seed, reproducible=True)
    model = create_timm_model(profile.embedder, False, num_classes=len(train_images.classes), **profile.embedder_kwargs)
    config = timm.data.resolve_model_data_config(model, args=dict(profile.embedder_data_config))
    transform = timm.data.create_transform(**config, is_training=False)  # what MaskEmbedder will apply
    dls = loaders(LabelledImages(train_pixels, train_images.labels, transform, flip=True),
                  LabelledImages(val_pixels, val_images.labels, transform, flip=False), recipe.batch_size, device)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(recipe.epochs, recipe.lr, cbs=StopOnNonFiniteLoss(recipe.lr))
    seconds = time.perf_counter() - start
    names = learn.recorder.metric_names[1:-1]  # train_loss, valid_loss, accuracy (without "epoch" and "time")
    history = {name: [float(row[i]) for row in learn.recorder.values] for i, name in enumerate(names)}
    if len(history.get("accuracy", [])) != recipe.epochs or not np.isfinite(history["train_loss"]).all():
        raise RuntimeError(f"embedder training ended with {len(history.get('accuracy', []))} of {recipe.epochs} epochs "
                           f"recorded; {out} was left as it was")
    # the new weights go beside the old ones and replace them only once complete, with their report
    staged, staged_report = out.with_name(out.name + ".new"), report_path(out).with_name(report_path(out).name + ".new")
    try:
        with atomic_write(staged) as tmp:
            torch.save(model.state_dict(), tmp)  # a plain state dict, head included: what timm loads as a checkpoint
        report = provenance(profile, device) | {
            "embedder": {"name": profile.embedder, "kwargs": profile.embedder_kwargs,
                         "data_config": profile.embedder_data_config},
            "recipe": dataclasses.asdict(recipe),
            "scenes": root.name,
            "scene_style": profile.scene_key(),
            "accuracy": {"embedder's held-out scenes": history["accuracy"][-1]},
            "train_seconds": round(seconds, 1),
            "history": history,
            "weights_sha256": sha256(staged)[:12],
        }
        write_json(staged_report, report)
        staged.replace(out)  # then the report that vouches for them: a crash between the two is refused on loading
        staged_report.replace(report_path(out))
    finally:
        staged.unlink(missing_ok=True)
        staged_report.unlink(missing_ok=True)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_arguments(parser, "embedded")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--out", help="the weights file (default: the package's, named by the profile)")
    args = parser.parse_args(argv)
    try:
        if args.epochs < 1:
            raise SettingsError(f"--epochs {args.epochs}: --epochs takes a whole number of at least 1")
        profile = get_profile(args.profile, **parse_overrides(args.overrides))
        device = resolve_device(profile.device)
    except SettingsError as error:
        return refuse(error)
    out = Path(args.out) if args.out else weights_path(profile.embedder_weights or "embedder.pt")
    report = train(profile, Recipe(epochs=args.epochs), out, device)
    print(f"{out}: {report['accuracy']} after {report['train_seconds']:.0f} s (sha256 {report['weights_sha256']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
