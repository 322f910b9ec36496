"""Benchmark the study's two costly steps with random weights (they cost what trained ones cost):

    python -m partwhole.benchmark                  # paper profile: SAM ViT-H, MaxViT-pico, batch 512 (a GPU)
    python -m partwhole.benchmark --tiny           # tiny SAM and the embedded profile's models, on any CPU

Prints the teacher's seconds per image by stage (SAM image encoder, SAM mask decoder, mask embedding) and in
all from image file to stored targets, the targets' bytes on disk per image, pretraining images/s and peak
memory at the profile's batch size, and the estimated time of the whole study on this device.
"""
import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .costs import format_seconds, seconds_per_training_image, split_sizes
from .data import image_cache, list_images
from .model import Agglomerator, Distiller
from .profiles import Profile, get_profile
from .results import device_name
from .synthetic import generate
from .targets import CROP_MODES, MaskEmbedder, build_targets, embed_masks, targets_path
from .teacher import SamTeacher, build_tiny_sam
from .train import LevelWeightedMSE, resolve_device


def sam_teacher(profile: Profile, device: str, tiny: bool) -> SamTeacher:
    from segment_anything import sam_model_registry

    sam = build_tiny_sam(input_size=256) if tiny else sam_model_registry[profile.sam_model]()
    return SamTeacher(sam.to(device), profile.image_size, profile.grid, profile.level_order, profile.teacher_batch)


def teacher_stages(teacher: SamTeacher, embedder: MaskEmbedder, pixels: np.ndarray, crops) -> dict[str, float]:
    """Mean seconds per image of each stage, after one warm-up image."""
    totals = {"sam_encoder": 0.0, "sam_decoder": 0.0, "embedding": 0.0}
    for i, image in enumerate(np.asarray(pixels)):
        start = time.perf_counter()
        teacher.predictor.set_image(image)
        encoded = time.perf_counter()
        masks = teacher(image)  # encodes again: the decoder's share is the difference
        decoded = time.perf_counter()
        embed_masks(image, masks, embedder, crops)
        embedded = time.perf_counter()
        if i:  # the first image warms up
            totals["sam_encoder"] += encoded - start
            totals["sam_decoder"] += (decoded - encoded) - (encoded - start)
            totals["embedding"] += embedded - decoded
    return {stage: seconds / (len(pixels) - 1) for stage, seconds in totals.items()}


def pretraining_speed(profile: Profile, target_dim: int, device: str) -> tuple[float, float | None]:
    """(images per second, peak GiB on the GPU or None) of distillation steps at the profile's batch size."""
    cfg = profile.agglomerator_config(target_dim)
    model = Distiller(Agglomerator(cfg)).to(device)
    inputs = torch.randn(profile.batch_size, 3, profile.image_size, profile.image_size, device=device)
    targets = torch.randn(profile.batch_size, cfg.n_columns, cfg.levels, target_dim, device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = seconds_per_training_image(model, LevelWeightedMSE().to(device), inputs, targets)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return 1 / seconds, peak


def run(profile: Profile, n_images: int, tiny: bool) -> dict:
    device = resolve_device(profile.device)
    embedder = MaskEmbedder.from_profile(profile, device)
    teacher = sam_teacher(profile, device, tiny)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        per_class = max(1, n_images // 10)
        root = generate(work / "scenes", image_size=profile.image_size, train_per_class=per_class, val_per_class=1)
        images = list_images(root, "train")
        start = time.perf_counter()
        images, pixels = image_cache(images, profile.image_size, work / "cache")
        decode = (time.perf_counter() - start) / len(images)
        stages = teacher_stages(teacher, embedder, pixels, (profile.crop,))
        start = time.perf_counter()
        build_targets(profile, images, pixels, teacher, embedder, work / "targets", crops=CROP_MODES)
        both_modes = (time.perf_counter() - start) / len(images)
        disk = targets_path(work / "targets", "train", profile.crop).stat().st_size / len(images)
    images_per_s, peak_gib = pretraining_speed(profile, embedder.dim, device)
    sizes = split_sizes(profile)
    teacher_all = (decode + both_modes) * (sizes["train"] + sizes["val"])
    training_all = 3 * sizes["train"] * (profile.pretrain_epochs + 1) / images_per_s  # main, bbox, encoder runs
    return {
        "device": device_name(device),
        "teacher_s_per_image": stages | {"decode": decode, "one_crop_mode": decode + sum(stages.values()),
                                         "both_crop_modes": decode + both_modes},
        "targets_bytes_per_image": disk,
        "pretraining_images_per_s": images_per_s,
        "pretraining_peak_gib": peak_gib,
        "study_s": teacher_all + training_all,
    }


def report(profile: Profile, result: dict) -> str:
    stages = result["teacher_s_per_image"]
    peak = "n/a on a CPU" if result["pretraining_peak_gib"] is None else f"{result['pretraining_peak_gib']:.1f} GiB"
    lines = [f"benchmark, profile {profile.name} ({profile.image_size} px, grid {profile.grid}, SAM {profile.sam_model}, "
             f"embedder {profile.embedder}), random weights, {result['device']}",
             "teacher, seconds per image:"]
    lines += [f"  {stage:>16}: {seconds:.4f}" for stage, seconds in stages.items()]
    lines += [f"targets on disk: {result['targets_bytes_per_image'] / 1e6:.3f} MB per image and crop mode",
              f"pretraining at batch {profile.batch_size}: {result['pretraining_images_per_s']:.0f} images/s, "
              f"peak memory {peak}",
              f"whole study (targets for train+val, 3 pretrainings of {profile.pretrain_epochs} epochs): "
              f"about {format_seconds(result['study_s'])}"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny SAM and the embedded profile's sizes: runs anywhere in seconds, times nothing real")
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    if args.tiny:
        embedded = get_profile("embedded")
        profile = dataclasses.replace(embedded, name=f"{embedded.name} (tiny SAM)", teacher="sam")
    print(report(profile, run(profile, args.images, args.tiny)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
