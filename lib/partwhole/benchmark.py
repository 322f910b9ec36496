"""Benchmark the study's two costly steps with random weights (they cost what trained ones cost):

    python -m partwhole.benchmark                  # paper profile: SAM ViT-H, MaxViT-pico, batch 512 (a GPU)
    python -m partwhole.benchmark --tiny           # tiny SAM and the embedded profile's models, on any CPU
    python -m partwhole.benchmark --set sam_precision=bfloat16 --set compile=true   # any profile field
    python -m partwhole.benchmark --released-sam --set sam_precision=bfloat16       # bfloat16 SAM's real masks

Prints the fast teacher's seconds per image by stage (SAM image encoder, SAM mask decoder, mask embedding) and
in all from image file to stored targets, the bytes on disk per image (targets, and the optional bit-packed
mask cache), how far the fast path is from the straightforward one on the same images (with a random SAM that
checks the arithmetic: precision, resizing, transforms; with the released one, what it does to real masks),
pretraining images/s and peak memory at the profile's batch size with its precision and memory format, and
the estimated time of the whole study on this device.
"""
import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .agreement import agreement
from .costs import format_seconds, seconds_per_training_image, split_sizes
from .data import image_cache, list_images
from .model import Agglomerator, Distiller
from .profiles import Profile, get_profile
from .results import device_name
from .runner import _parse_overrides
from .synthetic import generate
from .targets import (CROP_MODES, MaskEmbedder, build_targets, distinct_masks, embed_masks, make_teacher, save_masks,
                      targets_path)
from .teacher import SamTeacher, autocast, build_tiny_sam
from .train import LevelWeightedMSE, resolve_device


def sam_teacher(profile: Profile, device: str, tiny: bool, released: bool) -> SamTeacher:
    from segment_anything import sam_model_registry

    if released:  # the checkpoint in profile.sam_checkpoint_dir: what the agreement of the two paths means
        return make_teacher(dataclasses.replace(profile, teacher="sam"), device)
    sam = build_tiny_sam(input_size=256) if tiny else sam_model_registry[profile.sam_model]()
    return SamTeacher(sam.to(device), profile.image_size, profile.grid, profile.level_order, profile.teacher_batch,
                      profile.sam_precision)


def _synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def teacher_stages(teacher: SamTeacher, embedder: MaskEmbedder, pixels: np.ndarray, crops, images_per_call: int,
                   mask_cache: Path) -> dict[str, float]:
    """Mean seconds per image of each stage of the fast path, after one warm-up batch; the bit-packed distinct
    masks of the timed images are written to `mask_cache`."""
    totals, images, distinct = {"sam_encoder": 0.0, "sam_decoder": 0.0, "embedding": 0.0}, 0, []
    device = str(teacher.device)
    for k, first in enumerate(range(0, len(pixels), images_per_call)):
        batch = torch.from_numpy(np.array(pixels[first : first + images_per_call]))
        start = time.perf_counter()
        embeddings = teacher.encode(batch)
        _synchronize(device)
        encoded = time.perf_counter()
        masks = distinct_masks(teacher.decode(embeddings))
        _synchronize(device)
        decoded = time.perf_counter()
        embed_masks(batch, masks, embedder, crops)  # its features come back to the CPU: synchronised
        embedded = time.perf_counter()
        if k:  # the first batch warms up
            totals["sam_encoder"] += encoded - start
            totals["sam_decoder"] += decoded - encoded
            totals["embedding"] += embedded - decoded
            images += len(batch)
            distinct.append(masks)
    save_masks(mask_cache, distinct)
    return {stage: seconds / images for stage, seconds in totals.items()} | {"mask_cache_bytes": mask_cache.stat().st_size / images}


def pretraining_speed(profile: Profile, target_dim: int, device: str) -> tuple[float, float | None]:
    """(images per second, peak GiB on the GPU or None) of distillation steps at the profile's batch size, with
    its precision, memory format and compilation."""
    cfg = profile.agglomerator_config(target_dim)
    memory_format = torch.channels_last if profile.channels_last else torch.contiguous_format
    model = Distiller(Agglomerator(cfg)).to(device, memory_format=memory_format)
    if profile.compile:
        model.compile()
    inputs = torch.randn(profile.batch_size, 3, profile.image_size, profile.image_size, device=device)
    targets = torch.randn(profile.batch_size, cfg.n_columns, cfg.levels, target_dim, device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with autocast(profile.precision, device):
        seconds = seconds_per_training_image(model, LevelWeightedMSE().to(device),
                                             inputs.contiguous(memory_format=memory_format), targets)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return 1 / seconds, peak


def run(profile: Profile, n_images: int, tiny: bool, released_sam: bool = False) -> dict:
    device = resolve_device(profile.device)
    embedder = MaskEmbedder.from_profile(profile, device)
    teacher = sam_teacher(profile, device, tiny, released_sam)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        per_class = max(1, n_images // 10)
        root = generate(work / "scenes", image_size=profile.image_size, train_per_class=per_class, val_per_class=1)
        images = list_images(root, "train")
        start = time.perf_counter()
        images, pixels = image_cache(images, profile.image_size, work / "cache")
        decode = (time.perf_counter() - start) / len(images)
        stages = teacher_stages(teacher, embedder, pixels, (profile.crop,), profile.teacher_images, work / "masks.npz")
        mask_cache = stages.pop("mask_cache_bytes")
        start = time.perf_counter()
        build_targets(profile, images, pixels, teacher, embedder, work / "targets", crops=CROP_MODES)
        both_modes = (time.perf_counter() - start) / len(images)
        disk = targets_path(work / "targets", "train", profile.crop).stat().st_size / len(images)
        agree = agreement(teacher, embedder, pixels[:2], images.paths[:2], CROP_MODES)
    images_per_s, peak_gib = pretraining_speed(profile, embedder.dim, device)
    sizes = split_sizes(profile)
    teacher_all = (decode + both_modes) * (sizes["train"] + sizes["val"])
    training_all = 3 * sizes["train"] * (profile.pretrain_epochs + 1) / images_per_s  # main, bbox, encoder runs
    return {
        "device": device_name(device),
        "weights": "released SAM" if released_sam else "random SAM",
        "teacher_s_per_image": stages | {"decode": decode, "one_crop_mode": decode + sum(stages.values()),
                                         "both_crop_modes": decode + both_modes},
        "targets_bytes_per_image": disk,
        "mask_cache_bytes_per_image": mask_cache,
        "agreement": agree,
        "pretraining_images_per_s": images_per_s,
        "pretraining_peak_gib": peak_gib,
        "study_s": teacher_all + training_all,
    }


def report(profile: Profile, result: dict) -> str:
    stages, agree = result["teacher_s_per_image"], result["agreement"]
    peak = "n/a on a CPU" if result["pretraining_peak_gib"] is None else f"{result['pretraining_peak_gib']:.1f} GiB"
    lines = [f"benchmark, profile {profile.name} ({profile.image_size} px, grid {profile.grid}, SAM {profile.sam_model} "
             f"in {profile.sam_precision}, embedder {profile.embedder} in {profile.precision}"
             f"{', channels-last' if profile.channels_last else ''}), {result['weights']}, {result['device']}",
             f"teacher (fast path, {profile.teacher_images} images per SAM encoder call), seconds per image:"]
    lines += [f"  {stage:>16}: {seconds:.4f}" for stage, seconds in stages.items()]
    lines += [f"targets on disk: {result['targets_bytes_per_image'] / 1e6:.3f} MB per image and crop mode; "
              f"optional mask cache {result['mask_cache_bytes_per_image'] / 1e6:.3f} MB per image",
              f"fast vs straightforward path, 2 images: masks' mean IoU {agree['mask_iou']:.4f}, targets' cosine "
              f"mean {agree['cosine_mean']:.4f}, min {agree['cosine_min']:.4f}",
              f"pretraining at batch {profile.batch_size} ({profile.precision}"
              f"{', channels-last' if profile.channels_last else ''}{', compiled' if profile.compile else ''}): "
              f"{result['pretraining_images_per_s']:.0f} images/s, peak memory {peak}",
              f"whole study (targets for train+val, 3 pretrainings of {profile.pretrain_epochs} epochs): "
              f"about {format_seconds(result['study_s'])}"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny SAM and the embedded profile's sizes: runs anywhere in seconds, times nothing real")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--released-sam", action="store_true",
                        help="the released SAM checkpoint instead of random weights, so that the agreement of the fast "
                             "path (e.g. in bfloat16) with the straightforward one says what it does to real masks")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field (JSON value), repeatable: e.g. sam_precision=bfloat16")
    args = parser.parse_args(argv)
    overrides = _parse_overrides(args.overrides)
    profile = get_profile(args.profile, **overrides)
    if args.tiny:
        embedded = get_profile("embedded", **overrides)
        profile = dataclasses.replace(embedded, name=f"{embedded.name} (tiny SAM)", teacher="sam")
    print(report(profile, run(profile, args.images, args.tiny, args.released_sam)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
