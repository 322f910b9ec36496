"""Every run of the study, in notebook order, with what it costs on this device: the dry run's list, the GPU
check's estimate. Each cost is a few training steps of the run's model timed on random inputs of the profile's
shapes (random weights cost what trained ones cost), times the images and epochs of the run.
"""
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from fastai.losses import LabelSmoothingCrossEntropy

from ..core.devices import synchronize
from ..core.timing import seconds_per_training_image
from ..method.embedder import CROP_MODES, MaskEmbedder, distinct_masks, embed_masks
from ..method.model import Agglomerator, Distiller
from ..method.sam import SamTeacher
from ..method.train import LevelWeightedMSE
from ..study.profiles import Profile
from ..baselines import contrastive, xresnet
from ..analysis.controls import CONTROLS, can_run

IMAGENETTE_SIZES = {"train": 9469, "val": 3925}  # imagenette2, full size
TIMING_BATCH = 64  # at most: enough to fill a GPU reasonably, small enough to fit any


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


def distillation_seconds_per_image(profile: Profile, target_dim: int, device: str) -> float:
    batch = min(profile.batch_size, TIMING_BATCH)
    cfg = profile.agglomerator_config(target_dim)
    model = Distiller(Agglomerator(cfg)).to(device)
    inputs = torch.randn(batch, 3, profile.image_size, profile.image_size, device=device)
    targets = torch.randn(batch, cfg.n_columns, cfg.levels, target_dim, device=device)
    return seconds_per_training_image(model, LevelWeightedMSE(profile.level_weights).to(device), inputs, targets)


def supcon_seconds_per_image(profile: Profile, cfg, device: str) -> float:
    """One SupCon step on two views per image (RandAugment runs on the CPU loader and is not counted)."""
    batch = min(profile.batch_size, TIMING_BATCH)
    views = torch.randn(batch, 2, 3, cfg.image_size, cfg.image_size, device=device)
    labels = torch.randint(0, cfg.n_classes, (batch,), device=device)
    model = contrastive.ContrastiveAgglomerator(cfg).to(device)
    return seconds_per_training_image(model, contrastive.supcon_loss, views, labels)


def frozen_classifier_seconds_per_image(profile: Profile, cfg, device: str) -> float:
    """Table 3's "None" row at the original configuration: a classifier trained on a frozen random network's
    output, each image a new RandAugment view (the forward of the frozen network is most of it)."""
    batch = min(profile.batch_size, TIMING_BATCH)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    labels = torch.randint(0, cfg.n_classes, (batch,), device=device)
    model = contrastive.FrozenClassifier(contrastive.ContrastiveAgglomerator(cfg)).to(device)
    return seconds_per_training_image(model, torch.nn.CrossEntropyLoss(), images, labels)


def xresnet_seconds_per_image(size: int, batch_size: int, device: str, architecture: str = xresnet.ARCHITECTURE,
                              widen: float = 1.0) -> float:
    inputs = torch.randn(min(batch_size, TIMING_BATCH), 3, size, size, device=device)
    labels = torch.randint(0, 10, (len(inputs),), device=device)
    model = xresnet.build(10, architecture, widen).to(device)
    return seconds_per_training_image(model, LabelSmoothingCrossEntropy(), inputs, labels)


def random_sam_teacher(profile: Profile, device: str) -> SamTeacher:
    """The profile's SAM architecture with random weights, prompted as the profile prompts it."""
    return SamTeacher.from_profile(replace(profile, random_weights=True), device)


def timed_fast_path(teacher: SamTeacher, embedder: MaskEmbedder, pixels: np.ndarray, images_per_call: int) -> tuple:
    """The fast path targets are built with, by stage: masks (N, P, L, H, W) on the CPU, {crop: targets (N, P, L, D)},
    the distinct masks of each batch, and seconds per image of each stage and per crop mode. The first batch warms
    up and is not timed, so `pixels` should hold more than one batch."""
    stages = ("sam_encoder", "sam_decoder", "distinct_masks") + tuple(f"embedding_{crop}" for crop in CROP_MODES)
    seconds, timed = dict.fromkeys(stages, 0.0), 0
    masks, targets, distinct = [], {crop: [] for crop in CROP_MODES}, []
    for k, first in enumerate(range(0, len(pixels), images_per_call)):
        batch = torch.from_numpy(np.array(pixels[first : first + images_per_call]))
        ticks = [time.perf_counter()]
        embeddings = teacher.encode(batch)
        synchronize(teacher.device)
        ticks.append(time.perf_counter())
        batch_masks = teacher.decode(embeddings)
        synchronize(teacher.device)
        ticks.append(time.perf_counter())
        unique = distinct_masks(batch_masks)
        synchronize(teacher.device)
        ticks.append(time.perf_counter())
        for crop in CROP_MODES:  # features come back to the CPU: synchronised
            targets[crop].append(embed_masks(batch, unique, embedder, (crop,))[crop])
            ticks.append(time.perf_counter())
        if k:
            for stage, before, after in zip(stages, ticks, ticks[1:]):
                seconds[stage] += after - before
            timed += len(batch)
        masks.append(batch_masks.cpu())
        distinct.append(unique)
    if not timed:
        raise ValueError(f"{len(pixels)} images make one batch of {images_per_call}: nothing is left to time after the "
                         "warm-up; give more images")
    per_image = {stage: total / timed for stage, total in seconds.items()}
    sam = per_image["sam_encoder"] + per_image["sam_decoder"] + per_image["distinct_masks"]
    per_image |= {crop: sam + per_image[f"embedding_{crop}"] for crop in CROP_MODES}
    per_image["both_crop_modes"] = sam + sum(per_image[f"embedding_{crop}"] for crop in CROP_MODES)
    return torch.cat(masks), {crop: torch.cat(t) for crop, t in targets.items()}, distinct, per_image


def teacher_seconds_per_image(profile: Profile, device: str) -> dict | None:
    """SAM (random weights) and the embedder on the fast path, seconds per image by stage; only on a GPU (on a CPU,
    SAM ViT-H takes minutes per image, which is no way to run the paper profile anyway)."""
    if profile.teacher != "sam" or not device.startswith("cuda"):
        return None
    embedder = MaskEmbedder.from_profile(replace(profile, random_weights=True), device)
    size = (2 * profile.teacher_images, profile.image_size, profile.image_size, 3)
    pixels = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    return timed_fast_path(random_sam_teacher(profile, device), embedder, pixels, profile.teacher_images)[3]


def study_runs(profile: Profile, target_dim: int, device: str | None, teacher: dict | None = None,
               distillation: float | None = None) -> list[Run]:
    """The runs behind Tables 1-4 and the controls, in notebook order, each with its estimated cost on `device` (None:
    list them, time nothing); `teacher`: the fast path's seconds per image by stage, if already measured;
    `distillation`: seconds per image of a distillation step measured at the profile's batch size and settings (the
    levels encoder's runs then cost it times the ratio of the two models' timed steps).

    Probes and classifiers train a head on features computed once, so they cost about one pass over the data;
    they are folded into each run's estimate as one more epoch.
    """
    sizes = split_sizes(profile)
    images = sizes["train"]
    timed = device is not None

    def timing(measure, *args):
        return measure(*args) if timed else None

    main = timing(distillation_seconds_per_image, profile, target_dim, device)
    encoder = timing(distillation_seconds_per_image, replace(profile, levels_encoder=True), target_dim, device)
    if distillation is not None and timed:
        main, encoder = distillation, distillation * encoder / main
    teacher = teacher or timing(teacher_seconds_per_image, profile, device) or {}
    distillation = profile.pretrain_epochs + 1
    runs = []
    runs += [
        Run("02", f"{profile.teacher} teacher + {profile.embedder}, both crop modes, train and val",
            images + sizes["val"], 1, teacher.get("both_crop_modes")),
        Run("03", f"distillation pretraining + probe, crop={profile.crop} (Tables 1-4)", images, distillation, main),
        Run("03", f"the same probe for {profile.probe_epochs_short} epochs (Table 4)", images, 1, main),
        Run("03", "probe without pretraining (Table 3)", images, 1, main),
    ]
    if profile.plateau_check:
        runs.append(Run("03", "the same pretraining at twice the epochs + probe (plateau check)", images,
                        2 * profile.pretrain_epochs + 1, main))
    runs += [
        Run("04", "distillation pretraining + probe, crop=bbox (Table 1)", images, distillation, main),
        Run("04", "distillation pretraining + probe, levels encoder (Table 2)", images, distillation, encoder),
        Run("04", "distillation pretraining + probe, equal level weights", images, distillation, main),
    ]
    for name in profile.contrastive_configs:
        cfg = contrastive.agglomerator_config(name, profile)
        if name == "original":
            runs.append(Run("05", "classifier on the frozen, randomly initialised original configuration, RandAugment "
                                  "(Table 3's None)", images, profile.probe_epochs,
                            timing(frozen_classifier_seconds_per_image, profile, cfg, device)))
        runs.append(Run("05", f"supervised contrastive pretraining + classifier, {name} configuration (Table 3)",
                        images, profile.contrastive_epochs + 1, timing(supcon_seconds_per_image, profile, cfg, device)))
    for size, batch_size in zip(profile.xresnet_sizes, profile.xresnet_batch_sizes):
        runs.append(Run("05", f"{profile.xresnet_architecture} at {size} px, batch {batch_size} (Table 4)", images,
                        profile.xresnet_epochs, timing(xresnet_seconds_per_image, size, batch_size, device,
                                                       profile.xresnet_architecture, profile.xresnet_widen)))
    # the data-efficiency curve: XResNet again on each labelled share below 1 (the probes are cheap), each share
    # repeated to the fit set's length, so each costs a whole run
    shares = [f for f in profile.label_fractions if f < 1]
    size, batch_size = profile.xresnet_sizes[-1], profile.xresnet_batch_sizes[-1]
    runs.append(Run("05", f"data efficiency: {profile.xresnet_architecture} at {size} px on the labelled shares "
                          f"{shares}", len(shares) * images, profile.xresnet_epochs,
                    timing(xresnet_seconds_per_image, size, batch_size, device, profile.xresnet_architecture,
                           profile.xresnet_widen)))
    controls = [control for control in CONTROLS if can_run(control, profile)]
    # with the mask cache the controls reuse SAM's masks: their targets cost the embedding alone
    embedding = teacher.get("embedding_" + profile.crop)
    control_teacher = embedding if profile.mask_cache and embedding is not None else teacher.get(profile.crop)
    runs.append(Run("07", f"controls' targets of train: {', '.join(c.name for c in controls)}", images * len(controls),
                    1, control_teacher))
    for control in controls:
        cost = encoder if control.overrides.get("levels_encoder") else main
        runs.append(Run("07", f"control {control.name}: pretraining + probe", images, distillation, cost))
    runs.append(Run("07", "control teacher_ceiling: probe on the embedder's whole-image features", images, 1, None))
    runs.append(Run("07", "control bag_of_parts: probe on the mean subpart target", images, 1, None))
    return runs


def seconds_per_notebook(runs: list[Run], notebooks) -> dict[str, float | None]:
    """{notebook file: the summed seconds of its timed runs}; None for a notebook without a timed run."""
    shares = {}
    for notebook in notebooks:
        timed = [run.seconds for run in runs if notebook.startswith(run.notebook) and run.seconds is not None]
        shares[notebook] = sum(timed) if timed else None
    return shares
