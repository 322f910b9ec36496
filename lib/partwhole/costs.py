"""What a profile's study will cost on this device, before running it: every run Tables 1-4 need, with an
estimate from a few timed training steps of each model on random inputs of the profile's shapes (random
weights cost the same as trained ones), times the images and epochs of that run.
"""
import time
from dataclasses import dataclass, replace

import torch

from .model import Agglomerator, Distiller
from .profiles import Profile
from .train import LevelWeightedMSE, estimate_fit_seconds

IMAGENETTE_SIZES = {"train": 9469, "val": 3925}  # imagenette2, full size


@dataclass(frozen=True)
class Run:
    notebook: str
    name: str
    images: int  # images seen per epoch (train and its holdout)
    epochs: int
    seconds_per_image: float | None  # None: not timed on this device

    @property
    def seconds(self) -> float | None:
        return None if self.seconds_per_image is None else self.seconds_per_image * self.images * self.epochs


def split_sizes(profile: Profile) -> dict[str, int]:
    if profile.dataset == "imagenette":
        return IMAGENETTE_SIZES
    return {"train": 10 * profile.train_per_class, "val": 10 * profile.val_per_class}


def seconds_per_training_image(model: torch.nn.Module, loss, inputs: torch.Tensor, targets: torch.Tensor,
                               repeats: int = 2) -> float:
    """Forward, backward and an optimiser step on one batch, timed after a warm-up step, per image."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def step():
        optimizer.zero_grad()
        loss(model(inputs), targets).backward()
        optimizer.step()
        if inputs.is_cuda:
            torch.cuda.synchronize()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats / len(inputs)


TIMING_BATCH = 64  # at most: enough to fill a GPU reasonably, small enough to fit any


def distillation_seconds_per_image(profile: Profile, target_dim: int, device: str) -> float:
    batch = min(profile.batch_size, TIMING_BATCH)
    cfg = profile.agglomerator_config(target_dim)
    model = Distiller(Agglomerator(cfg)).to(device)
    inputs = torch.randn(batch, 3, profile.image_size, profile.image_size, device=device)
    targets = torch.randn(batch, cfg.n_columns, cfg.levels, target_dim, device=device)
    return seconds_per_training_image(model, LevelWeightedMSE().to(device), inputs, targets)


def supcon_seconds_per_image(profile: Profile, cfg, device: str) -> float:
    """One SupCon step on two views per image (RandAugment runs on the CPU loader and is not counted)."""
    from .contrastive import ContrastiveAgglomerator, supcon_loss

    batch = min(profile.batch_size, TIMING_BATCH)
    views = torch.randn(batch, 2, 3, cfg.image_size, cfg.image_size, device=device)
    labels = torch.randint(0, cfg.n_classes, (batch,), device=device)
    return seconds_per_training_image(ContrastiveAgglomerator(cfg).to(device), supcon_loss, views, labels)


def xresnet_seconds_per_image(size: int, batch_size: int, device: str) -> float:
    from fastai.losses import LabelSmoothingCrossEntropy

    from .xresnet import build

    inputs = torch.randn(min(batch_size, TIMING_BATCH), 3, size, size, device=device)
    labels = torch.randint(0, 10, (len(inputs),), device=device)
    return seconds_per_training_image(build().to(device), LabelSmoothingCrossEntropy(), inputs, labels)


def embedder_training_seconds_per_image(profile: Profile, device: str) -> float:
    import timm

    model = timm.create_model(profile.embedder, num_classes=10, **profile.embedder_kwargs).to(device)
    size = timm.data.resolve_model_data_config(model, args=dict(profile.embedder_data_config))["input_size"]
    inputs = torch.randn(min(profile.batch_size, TIMING_BATCH), *size, device=device)
    labels = torch.randint(0, 10, (len(inputs),), device=device)
    return seconds_per_training_image(model, torch.nn.CrossEntropyLoss(), inputs, labels)


def study_runs(profile: Profile, target_dim: int, device: str | None, teacher_seconds: float | None = None) -> list[Run]:
    """The runs behind Tables 1-4, each with its estimated cost on `device` (None: list them, time nothing);
    `teacher_seconds`: the teacher's seconds per image (both crop modes) if already measured.

    Probes and classifiers train a head on features computed once, so they cost about one pass over the data;
    they are folded into each run's estimate as one more epoch.
    """
    from .contrastive import agglomerator_config

    sizes = split_sizes(profile)
    images = sizes["train"]
    timed = device is not None

    def timing(measure, *args):
        return measure(*args) if timed else None

    main = timing(distillation_seconds_per_image, profile, target_dim, device)
    encoder = timing(distillation_seconds_per_image, replace(profile, levels_encoder=True), target_dim, device)
    distillation = profile.pretrain_epochs + 1
    runs = []
    if profile.embedder_training_epochs:
        runs.append(Run("02", f"{profile.embedder} trained with labels on train (the stand-in for ImageNet's)", images,
                        profile.embedder_training_epochs + 1, timing(embedder_training_seconds_per_image, profile, device)))
    runs += [
        Run("02", f"{profile.teacher} teacher + {profile.embedder}, both crop modes, train and val",
            images + sizes["val"], 1,
            teacher_seconds if teacher_seconds is not None else timing(teacher_seconds_per_image, profile, device)),
        Run("03", f"distillation pretraining + probe, crop={profile.crop} (Tables 1-4)", images, distillation, main),
        Run("03", "probe without pretraining (Table 3)", images, 1, main),
        Run("04", "distillation pretraining + probe, crop=bbox (Table 1)", images, distillation, main),
        Run("04", "distillation pretraining + probe, levels encoder (Table 2)", images, distillation, encoder),
    ]
    for name in profile.contrastive_configs:
        cfg = agglomerator_config(name, profile)
        runs.append(Run("05", f"supervised contrastive pretraining + classifier, {name} configuration (Table 3)",
                        images, profile.contrastive_epochs + 1, timing(supcon_seconds_per_image, profile, cfg, device)))
    for size, batch_size in zip(profile.xresnet_sizes, profile.xresnet_batch_sizes):
        runs.append(Run("05", f"xresnet50 at {size} px, batch {batch_size} (Table 4)", images, profile.xresnet_epochs,
                        timing(xresnet_seconds_per_image, size, batch_size, device)))
    from .controls import CONTROLS, can_run  # imported here: controls builds on the study, which imports costs

    controls = [control for control in CONTROLS if can_run(control, profile)]
    teacher = runs[1 if profile.embedder_training_epochs else 0].seconds_per_image
    runs.append(Run("07", f"controls' targets of train: {', '.join(c.name for c in controls)}", images * len(controls),
                    1, teacher))
    for control in controls:
        cost = encoder if control.overrides.get("levels_encoder") else main
        runs.append(Run("07", f"control {control.name}: pretraining + probe", images, distillation, cost))
    runs.append(Run("07", "control teacher_ceiling: probe on the embedder's whole-image features", images, 1, None))
    return runs


def announce(learn, epochs: int, what: str) -> float:
    """Print a training run's estimated time before it starts (a few steps timed on this device); returns it."""
    seconds = estimate_fit_seconds(learn, epochs)
    print(f"{what}: {epochs} epochs on {learn.dls.device}, about {format_seconds(seconds)} (timed on a few batches)",
          flush=True)
    return seconds


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "not timed here"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def teacher_seconds_per_image(profile: Profile, device: str) -> float | None:
    """SAM (random weights) and the embedder over a batch of `teacher_images` images, both crop modes, on the fast
    path targets are built with (per image); only timed on a GPU (on a CPU SAM ViT-H takes minutes per image,
    which is no way to run the paper profile anyway)."""
    if profile.teacher != "sam" or not device.startswith("cuda"):
        return None
    from segment_anything import sam_model_registry

    from .targets import CROP_MODES, MaskEmbedder, distinct_masks, embed_masks
    from .teacher import SamTeacher

    sam = sam_model_registry[profile.sam_model]().to(device)
    teacher = SamTeacher(sam, profile.image_size, profile.grid, profile.level_order, profile.teacher_batch,
                         profile.sam_precision)
    embedder = MaskEmbedder(profile.embedder, False, profile.embedder_kwargs, profile.embedder_data_config, device,
                            profile.teacher_batch, profile.precision, profile.channels_last)
    images = torch.randint(0, 256, (profile.teacher_images, profile.image_size, profile.image_size, 3), dtype=torch.uint8)

    def targets():
        embed_masks(images, distinct_masks(teacher.masks(images)), embedder, CROP_MODES)  # features reach the CPU

    targets()  # warm-up
    start = time.perf_counter()
    targets()
    return (time.perf_counter() - start) / len(images)