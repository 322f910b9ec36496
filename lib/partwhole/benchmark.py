"""The GPU check: the study's costly steps measured on this machine with random weights (they cost what trained
ones cost), beside the goals they must meet, written to results/gpu/<device>.json with provenance.

    python -m partwhole.benchmark                  # the paper profile on this GPU (make gpu-check)
    python -m partwhole.benchmark --tiny           # the same code with tiny models, on any CPU (times nothing real)
    python -m partwhole.benchmark --set sam_precision=bfloat16   # any profile field

1. The teacher, two paths on the same images. The straightforward one: SamPredictor one image at a time in
   float32, each masked image made with PIL and embedded through timm's own PIL transform. The fast one, that
   targets are built with: several images per SAM encoder call, all points of an image per decoder call, distinct
   masks embedded once, masking and transforms as tensors on the GPU. Seconds per image by stage and per crop
   mode, the ratio of the two paths per crop mode (goal: the fast path at least 20x faster), how far apart their
   masks and targets are (a random SAM's masks: this checks arithmetic, not SAM), and the bytes on disk per image.
2. Pretraining: images/s and peak GPU memory of distillation steps at the profile's batch size, in float32 and in
   bfloat16 with the profile's memory format (goal: at least 1.5x the float32 images/s at no more than half its
   peak memory).
3. The whole study's estimated time on this machine, run by run.
4. With --rehearse, the rehearsal profile's eight notebooks at larger counts with the paper's models at their own
   sizes (SAM ViT-H, MaxViT-pico at 256 px, DINO ViT-S/16 at 224 px; random weights): each notebook's time, or the
   failure that stopped it.
"""
import argparse
import dataclasses
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import artefacts
from .agreement import compare, reference_targets
from .costs import random_sam_teacher, study_runs, timed_fast_path
from .data import image_cache, list_images
from .devices import autocast, device_name, resolve_device
from .embedder import CROP_MODES as CROPS
from .embedder import MaskEmbedder
from .model import Agglomerator, Distiller
from .profiles import Profile, SettingsError, add_profile_arguments, get_profile, parse_overrides, refuse
from .results import provenance
from .runner import NotebookFailed, run_study
from .sam import SamTeacher
from .synthetic import generate
from .targets import save_masks
from .timing import format_seconds, seconds_per_training_image
from .train import LevelWeightedMSE
TEACHER_SPEEDUP_GOAL = 20.0  # fast path vs straightforward path, per crop mode
BFLOAT16_SPEED_GOAL = 1.5  # pretraining images/s, bfloat16 over float32
BFLOAT16_MEMORY_GOAL = 0.5  # pretraining peak memory, bfloat16 over float32
# the rehearsal on a GPU: the paper's models at their own sizes, more images and epochs than on a CPU
GPU_REHEARSAL = {"sam_model": "vit_h", "embedder_image_size": None, "train_per_class": 10, "val_per_class": 4,
                 "holdout_fraction": 0.2, "pretrain_epochs": 2, "probe_epochs": 2, "batch_size": 32,
                 "teacher_images": 8, "teacher_batch": 64, "precision": "bfloat16", "channels_last": True,
                 "xresnet_batch_sizes": [32, 64, 64]}


def straightforward_path(teacher: SamTeacher, embedder: MaskEmbedder, pixels: np.ndarray) -> tuple:
    """Masks (N, P, L, H, W), {crop: targets (N, P, L, D)} and seconds per image by stage, image by image, after
    one warm-up image."""
    reference_targets(pixels[0], teacher(pixels[0]), embedder, CROPS)  # warm-up
    seconds = {"sam": 0.0} | {f"embedding_{crop}": 0.0 for crop in CROPS}
    masks, targets = [], {crop: [] for crop in CROPS}
    for image in pixels:
        start = time.perf_counter()
        image_masks = teacher(image)  # on the CPU: synchronised
        seconds["sam"] += time.perf_counter() - start
        for crop in CROPS:
            start = time.perf_counter()
            targets[crop].append(reference_targets(image, image_masks, embedder, (crop,))[crop])
            seconds[f"embedding_{crop}"] += time.perf_counter() - start
        masks.append(image_masks)
    per_image = {stage: total / len(pixels) for stage, total in seconds.items()}
    per_image |= {crop: per_image["sam"] + per_image[f"embedding_{crop}"] for crop in CROPS}
    return torch.stack(masks), {crop: torch.stack(t) for crop, t in targets.items()}, per_image


def bytes_per_image(targets: torch.Tensor, distinct: list, work: Path) -> dict:
    """Stored as the study stores them: float16 targets in a .npy file per crop mode; the optional bit-packed mask
    cache (profile.mask_cache)."""
    np.save(work / "targets.npy", targets.numpy().astype(np.float16))
    save_masks(work / "masks.npz", distinct)
    n = len(targets)
    return {"targets_per_crop_mode": (work / "targets.npy").stat().st_size / n,
            "mask_cache": (work / "masks.npz").stat().st_size / n}


def teacher_check(profile: Profile, device: str, n_images: int, n_reference: int) -> dict:
    embedder = MaskEmbedder.from_profile(dataclasses.replace(profile, random_weights=True), device)
    teacher = random_sam_teacher(profile, device)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        per_class = -(-n_images // 10)
        root = generate(work / "scenes", image_size=profile.image_size, train_per_class=per_class, val_per_class=1)
        _, pixels = image_cache(list_images(root, "train"), profile.image_size, work / "cache")
        pixels = np.array(pixels[:n_images])
        fast_masks, fast_targets, distinct, fast = timed_fast_path(teacher, embedder, pixels, profile.teacher_images)
        reference_masks, reference, straightforward = straightforward_path(teacher, embedder, pixels[:n_reference])
        disk = bytes_per_image(fast_targets[profile.crop], distinct, work)
    return {
        "images": {"fast": len(pixels), "straightforward": n_reference, "timed_fast": len(pixels) - profile.teacher_images},
        "seconds_per_image": {"straightforward": straightforward, "fast": fast},
        "speedup": {crop: straightforward[crop] / fast[crop] for crop in CROPS},
        "agreement": compare(fast_masks[:n_reference], {c: t[:n_reference] for c, t in fast_targets.items()},
                             reference_masks, reference),
        "bytes_per_image": disk,
        "embedder_dim": embedder.dim,
    }


def pretraining_speed(profile: Profile, target_dim: int, device: str, repeats: int) -> dict:
    """Images per second and peak GPU memory (GiB; None on a CPU) of distillation steps at the profile's batch size,
    with its precision, memory format and compilation."""
    cfg = profile.agglomerator_config(target_dim)
    memory_format = torch.channels_last if profile.channels_last else torch.contiguous_format
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = Distiller(Agglomerator(cfg)).to(device, memory_format=memory_format)
    if profile.compile:
        model.compile()
    inputs = torch.randn(profile.batch_size, 3, profile.image_size, profile.image_size, device=device)
    targets = torch.randn(profile.batch_size, cfg.n_columns, cfg.levels, target_dim, device=device)
    with autocast(profile.precision, device):
        seconds = seconds_per_training_image(model, LevelWeightedMSE().to(device),
                                             inputs.contiguous(memory_format=memory_format), targets, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"images_per_s": 1 / seconds, "peak_gib": peak, "batch_size": profile.batch_size,
            "channels_last": profile.channels_last, "compile": profile.compile}


def pretraining_check(profile: Profile, target_dim: int, device: str, repeats: int) -> dict:
    runs = {"float32": pretraining_speed(dataclasses.replace(profile, precision="float32", channels_last=False),
                                         target_dim, device, repeats),
            "bfloat16": pretraining_speed(dataclasses.replace(profile, precision="bfloat16"), target_dim, device,
                                          repeats)}
    speedup = runs["bfloat16"]["images_per_s"] / runs["float32"]["images_per_s"]
    memory = (runs["bfloat16"]["peak_gib"] / runs["float32"]["peak_gib"]) if runs["float32"]["peak_gib"] else None
    return runs | {"speedup": speedup, "memory_ratio": memory}


def goals(result: dict) -> list[dict]:
    teacher, pretraining = result["teacher"], result["pretraining"]
    rows = [{"goal": f"teacher, crop {crop}: fast path at least {TEACHER_SPEEDUP_GOAL:g}x the straightforward one",
             "measured": teacher["speedup"][crop], "met": teacher["speedup"][crop] >= TEACHER_SPEEDUP_GOAL}
            for crop in CROPS]
    rows.append({"goal": f"pretraining: bfloat16 at least {BFLOAT16_SPEED_GOAL:g}x the float32 images/s",
                 "measured": pretraining["speedup"], "met": pretraining["speedup"] >= BFLOAT16_SPEED_GOAL})
    memory = pretraining["memory_ratio"]
    rows.append({"goal": f"pretraining: bfloat16 peak memory at most {BFLOAT16_MEMORY_GOAL:g}x float32's",
                 "measured": memory, "met": None if memory is None else memory <= BFLOAT16_MEMORY_GOAL})
    return rows


def run(profile: Profile, n_images: int, n_reference: int, repeats: int, save=lambda result: None) -> dict:
    """Every measurement, `save(result)` called after each step so that a failure late keeps what was measured."""
    device = resolve_device(profile.device)
    result = provenance(profile, device) | {
        "weights": "random (times and bytes are those of trained weights; masks are not)",
        "torch_cuda": torch.version.cuda,
    }
    result["teacher"] = teacher_check(profile, device, n_images, n_reference)
    save(result)
    result["pretraining"] = pretraining_check(profile, result["teacher"]["embedder_dim"], device, repeats)
    result["goals"] = goals(result)
    save(result)
    runs = study_runs(profile, result["teacher"]["embedder_dim"], device, result["teacher"]["seconds_per_image"]["fast"])
    result["study"] = [dataclasses.asdict(r) | {"seconds": r.seconds} for r in runs]
    save(result)
    return result


def report(result: dict) -> str:
    teacher, pretraining = result["teacher"], result["pretraining"]
    s = result["settings"]
    lines = [f"GPU check, profile {result['profile']} ({s['image_size']} px, grid {s['grid']}, SAM {s['sam_model']} in "
             f"{s['sam_precision']} with {s['point_labels']} point labels, embedder {s['embedder']} in "
             f"{s['precision']}), random weights, {result['device']}, commit {result['git_commit']}",
             f"teacher, seconds per image ({teacher['images']['straightforward']} images straightforward, "
             f"{teacher['images']['timed_fast']} timed on the fast path):"]
    for path, stages in teacher["seconds_per_image"].items():
        lines.append(f"  {path:>15}: " + ", ".join(f"{stage} {seconds:.4f}" for stage, seconds in stages.items()))
    agree = teacher["agreement"]
    disk = teacher["bytes_per_image"]
    lines += [f"  agreement of the two paths: masks' mean IoU {agree['mask_iou']:.4f}, targets' cosine mean "
              f"{agree['cosine_mean']:.4f}, min {agree['cosine_min']:.4f}",
              f"  on disk per image: targets {disk['targets_per_crop_mode'] / 1e6:.3f} MB per crop mode, optional mask "
              f"cache {disk['mask_cache'] / 1e6:.3f} MB",
              f"pretraining at batch {pretraining['float32']['batch_size']}:"]
    for precision in ("float32", "bfloat16"):
        run_ = pretraining[precision]
        peak = "n/a on a CPU" if run_["peak_gib"] is None else f"{run_['peak_gib']:.2f} GiB"
        lines.append(f"  {precision:>9}{' channels-last' if run_['channels_last'] else ''}: "
                     f"{run_['images_per_s']:.1f} images/s, peak memory {peak}")
    lines.append("goals:")
    for goal in result["goals"]:
        measured = "n/a" if goal["measured"] is None else f"{goal['measured']:.2f}"
        verdict = {True: "met", False: "MISSED", None: "not measurable here"}[goal["met"]]
        lines.append(f"  {verdict:>6}: {goal['goal']} (measured {measured})")
    total = sum(r["seconds"] for r in result["study"] if r["seconds"] is not None)
    lines.append(f"the study's timed runs on this device: about {format_seconds(total)}")
    return "\n".join(lines)


def rehearse(overrides: dict) -> dict:
    """The rehearsal profile's notebooks at GPU counts (executed copies under runs/gpu-rehearsal/): each notebook's
    seconds, or the failure."""
    folder = artefacts.runs_dir("gpu-rehearsal")
    try:
        seconds = run_study("rehearsal", GPU_REHEARSAL | overrides, results_dir=folder / "results", runs_dir=folder)
        return {"overrides": GPU_REHEARSAL | overrides, "notebook_seconds": seconds, "passed": True}
    except NotebookFailed as error:
        return {"overrides": GPU_REHEARSAL | overrides, "failure": str(error), "passed": False}


def output_path(folder: Path, device: str) -> Path:
    return Path(folder) / (re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") + ".json")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_arguments(parser, "paper")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny SAM and the embedded profile's other sizes: runs anywhere in seconds, times "
                             "nothing real")
    parser.add_argument("--images", type=int, default=40, help="images through the fast path (the first batch warms up)")
    parser.add_argument("--reference-images", type=int, default=8, help="images through the straightforward path")
    parser.add_argument("--repeats", type=int, default=5, help="timed pretraining steps per precision")
    parser.add_argument("--out", default="results/gpu", help="folder of the JSON file named after the device")
    parser.add_argument("--rehearse", action="store_true", help="then run the rehearsal profile's notebooks at GPU "
                        "counts (--set overrides apply to both)")
    args = parser.parse_args(argv)
    try:
        tiny = {"teacher": "sam", "sam_model": "tiny", "random_weights": True} if args.tiny else {}
        profile = get_profile("embedded" if args.tiny else args.profile, **tiny | parse_overrides(args.overrides))
        resolve_device(profile.device)
    except SettingsError as error:
        return refuse(error)
    path = output_path(args.out, device_name(resolve_device(profile.device)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save = lambda result: artefacts.write_json(path, result)  # noqa: E731
    result = run(profile, args.images, args.reference_images, args.repeats, save)
    print(report(result))
    if args.rehearse:
        result["rehearsal"] = rehearse(parse_overrides(args.overrides))
        save(result)
        outcome = result["rehearsal"]
        print("rehearsal at GPU counts: " + (f"{sum(outcome['notebook_seconds'].values()):.0f} s, "
              + ", ".join(f"{k[:2]} {v:.0f} s" for k, v in outcome["notebook_seconds"].items())
              if outcome["passed"] else f"FAILED: {outcome['failure']}"))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
