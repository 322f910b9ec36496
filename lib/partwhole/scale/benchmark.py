"""The GPU check: the study's costly steps measured on this machine with random weights (they cost what trained
ones cost), each goal beside its target as a ratio, written to results/gpu/<device>.json with provenance after
every step (a check cut short keeps what it measured).

    python -m partwhole.scale.benchmark --rehearse  # the paper profile on this GPU, then the rehearsal (make gpu-check)
    python -m partwhole.scale.benchmark --tiny     # the same code with tiny models, on any CPU (times nothing real)
    python -m partwhole.scale.benchmark --set sam_precision=bfloat16  # any profile field

Two settings are measured side by side: the profile's own, and the profile with the speed switches that are off by
default (SWITCHES: SAM in bfloat16 with fused attention, all points of an image in one decoder call, larger
embedder batches, the pretrained model compiled,
its iterations checkpointed, Lion's foreach step), so that one run shows what each would gain and how far it
moves the numbers.

1. The teacher. The straightforward path: SamPredictor one image at a time in float32, each masked image made with
   PIL and embedded through timm's own PIL transform. The fast path, that targets are built with: several images
   per SAM encoder call, all points of an image per decoder call, distinct masks embedded once, masking and
   transforms as tensors on the GPU. Seconds per image by stage and per crop mode, the ratio of the two paths per
   crop mode (goal: at least 20x), and beside each setting's precisions how far its masks and targets are from the
   straightforward path's (a random SAM's masks: this checks arithmetic, not SAM); bytes on disk per image.
2. Pretraining: images/s and peak GPU memory of distillation steps (Lion, the profile's batch size) in float32, and
   with each setting (goal: at least 3x float32's images/s at no more than half its peak memory).
3. The whole study's estimated time on this machine, run by run and notebook by notebook (goal: one GPU-hour).
4. With --rehearse, the rehearsal profile's eight notebooks at GPU counts with the paper's models at their own sizes
   (SAM ViT-H, MaxViT-pico at 256 px, DINO ViT-S/16 at 224 px; random weights), one by one while the check's time
   budget lasts: each notebook's time, or the failure or the budget that stopped it. With --rehearse-only, this step
   alone (for a short GPU session, once steps 1-3 are measured), in <device>-rehearsal.json.
5. The check's own time against its budget (goal: 10 minutes), and the number of GPUs.
"""
import argparse
import dataclasses
import re
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from lion_pytorch import Lion

from ..core import artefacts
from ..core.devices import autocast, device_name, resolve_device
from ..core.timing import format_seconds, seconds_per_training_image
from ..datasets.data import image_cache, list_images
from ..datasets.synthetic import generate
from ..method.embedder import CROP_MODES as CROPS
from ..method.embedder import MaskEmbedder
from ..method.model import Agglomerator, Distiller
from ..method.sam import SamTeacher
from ..method.speedups import ForeachLion, checkpoint_iterations
from ..method.targets import save_masks
from ..method.train import LevelWeightedMSE
from ..study.profiles import Profile, SettingsError, add_profile_arguments, get_profile, parse_overrides, refuse
from ..study.results import provenance
from ..analysis.agreement import compare, reference_targets
from ..workflow.costs import random_sam_teacher, seconds_per_notebook, study_runs, timed_fast_path
from ..workflow.runner import NOTEBOOKS, NotebookFailed, run_study

STUDY_HOURS_GOAL = 1.0  # the whole study (Tables 1-4, controls, one seed) on the device that runs the check
TEACHER_SPEEDUP_GOAL = 20.0  # fast path vs straightforward path, per crop mode
PRETRAINING_SPEED_GOAL = 3.0  # pretraining images/s over float32's
PRETRAINING_MEMORY_GOAL = 0.5  # pretraining peak memory over float32's
CHECK_SECONDS_GOAL = 600.0  # the whole check, start to end
AGREEMENT_GOAL = 0.99  # masks' mean IoU and targets' mean cosine against the straightforward path, at least
# the speed switches off by default, measured beside the profile's settings
SWITCHES = {"sam_precision": "bfloat16", "sam_attention": "sdpa", "teacher_batch": 256, "embedder_batch": 512,
            "compile": True, "checkpoint_iterations": True, "foreach_optimizer": True}
TINY_SWITCHES = SWITCHES | {"embedder_batch": 64, "compile": False}  # inductor's compilation on a CPU takes minutes
SPEED_FIELDS = ("precision", "channels_last", "teacher_images") + tuple(SWITCHES)
REHEARSAL_RESERVE = 30.0  # seconds of the budget a notebook needs at least to be started
# the rehearsal on a GPU: the paper's models at their own sizes, more images and epochs than on a CPU
GPU_REHEARSAL = {"sam_model": "vit_h", "embedder_image_size": None, "train_per_class": 6, "val_per_class": 2,
                 "holdout_fraction": 0.2, "pretrain_epochs": 2, "probe_epochs": 2, "batch_size": 32,
                 "teacher_images": 8, "teacher_batch": 64, "precision": "bfloat16", "channels_last": True,
                 "xresnet_batch_sizes": [32, 64, 64]}


def settings(profile: Profile) -> dict:
    return {field: getattr(profile, field) for field in SPEED_FIELDS}


def measured(step):
    """step's result, or {"failure": ...} if it raised (out of memory, a compiler error): the check goes on."""
    try:
        return step()
    except Exception as error:  # noqa: BLE001  (recorded in the JSON and printed; the other steps still run)
        traceback.print_exc()
        return {"failure": f"{type(error).__name__}: {error}"[:500]}


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


def scenes(profile: Profile, n_images: int, work: Path) -> np.ndarray:
    per_class = -(-n_images // 10)
    root = generate(work / "scenes", image_size=profile.image_size, train_per_class=per_class, val_per_class=1)
    return np.array(image_cache(list_images(root, "train"), profile.image_size, work / "cache")[1][:n_images])


def teacher_check(variants: dict, device: str, n_images: int, n_reference: int, save=lambda part: None) -> dict:
    """The straightforward path once (float32, segment_anything's attention), then the fast path with each of
    `variants` ({label: profile}) on the same images; `save(result so far)` after each."""
    profile = next(iter(variants.values()))
    reference_profile = dataclasses.replace(profile, random_weights=True, sam_precision="float32",
                                            sam_attention="reference")
    embedder = MaskEmbedder.from_profile(reference_profile, device)
    result = {"images": {"fast": n_images, "straightforward": n_reference,
                         "timed_fast": n_images - profile.teacher_images}, "embedder_dim": embedder.dim}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        pixels = scenes(profile, n_images, work)
        reference_masks, reference, straightforward = straightforward_path(
            random_sam_teacher(reference_profile, device), embedder, pixels[:n_reference])
        result["straightforward"] = {"seconds_per_image": straightforward}
        save(result)
        for label, variant in variants.items():
            result[label] = measured(lambda: fast_path(variant, device, pixels, reference_masks, reference,
                                                       straightforward, work))
            save(result)
    return result


def fast_path(profile: Profile, device: str, pixels, reference_masks, reference, straightforward, work: Path) -> dict:
    """The fast path with the profile's settings: seconds per image by stage, speed-up per crop mode, and agreement
    with the straightforward path per crop mode (masks' mean IoU, targets' cosine)."""
    profile = dataclasses.replace(profile, random_weights=True)
    embedder = MaskEmbedder.from_profile(profile, device)
    masks, targets, distinct, fast = timed_fast_path(random_sam_teacher(profile, device), embedder, pixels,
                                                     profile.teacher_images)
    n = len(reference_masks)
    agreement = {crop: compare(masks[:n], {crop: targets[crop][:n]}, reference_masks, {crop: reference[crop]})
                 for crop in CROPS}
    return {"settings": settings(profile), "seconds_per_image": fast,
            "speedup": {crop: straightforward[crop] / fast[crop] for crop in CROPS},
            "agreement": agreement, "bytes_per_image": bytes_per_image(targets[profile.crop], distinct, work)}


def pretraining_speed(profile: Profile, target_dim: int, device: str, repeats: int) -> dict:
    """Images per second and peak GPU memory (GiB; None on a CPU) of distillation steps with Lion at the profile's
    batch size, with its precision, memory format, checkpointing, optimiser step and compilation."""
    cfg = profile.agglomerator_config(target_dim)
    memory_format = torch.channels_last if profile.channels_last else torch.contiguous_format
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = Distiller(Agglomerator(cfg)).to(device, memory_format=memory_format)
    if profile.checkpoint_iterations:
        checkpoint_iterations(model.backbone)
    if profile.compile:
        model.compile()
    optimizer = (ForeachLion if profile.foreach_optimizer else Lion)(model.parameters(), lr=profile.lr,
                                                                     betas=profile.betas, weight_decay=profile.wd)
    inputs = torch.randn(profile.batch_size, 3, profile.image_size, profile.image_size, device=device)
    targets = torch.randn(profile.batch_size, cfg.n_columns, cfg.levels, target_dim, device=device)
    with autocast(profile.precision, device):
        seconds = seconds_per_training_image(model, LevelWeightedMSE(profile.level_weights).to(device),
                                             inputs.contiguous(memory_format=memory_format), targets, repeats, optimizer)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"settings": settings(profile), "images_per_s": 1 / seconds, "peak_gib": peak,
            "batch_size": profile.batch_size}


def pretraining_check(variants: dict, target_dim: int, device: str, repeats: int, save=lambda part: None) -> dict:
    """float32 (no speed option) and each variant, with their images/s and peak memory as ratios to float32's."""
    profile = next(iter(variants.values()))
    plain = dataclasses.replace(profile, precision="float32", channels_last=False, compile=False,
                                checkpoint_iterations=False, foreach_optimizer=False)
    result = {"float32": measured(lambda: pretraining_speed(plain, target_dim, device, repeats))}
    save(result)
    base = result["float32"]
    for label, variant in variants.items():
        run_ = measured(lambda: pretraining_speed(variant, target_dim, device, repeats))
        if "failure" not in run_ and "failure" not in base:
            run_["speedup"] = run_["images_per_s"] / base["images_per_s"]
            run_["memory_ratio"] = run_["peak_gib"] / base["peak_gib"] if base["peak_gib"] else None
        result[label] = run_
        save(result)
    return result


def study_estimate(profile: Profile, target_dim: int, device: str, teacher: dict, pretraining: dict) -> dict:
    """Every run's estimated seconds with this setting's measured teacher and distillation costs, and each
    notebook's share."""
    runs = study_runs(profile, target_dim, device, teacher.get("seconds_per_image"),
                      1 / pretraining["images_per_s"] if "images_per_s" in pretraining else None)
    total = sum(run.seconds for run in runs if run.seconds is not None)
    return {"runs": [dataclasses.asdict(r) | {"seconds": r.seconds} for r in runs],
            "notebooks": seconds_per_notebook(runs, NOTEBOOKS), "seconds": total}


def goal(text: str, value, target: float, at_most: bool) -> dict:
    """A goal beside its target: the measured value, its ratio to the target, met or not (None: not measured)."""
    if value is None:
        return {"goal": text, "measured": None, "target": target, "ratio": None, "met": None}
    return {"goal": text, "measured": value, "target": target, "ratio": value / target,
            "met": value <= target if at_most else value >= target}


def goals(result: dict) -> list[dict]:
    """Goals 1-3 for each measured setting, 4 and 5 for the check (once they are known)."""
    rows = []
    for label in result["variants"]:
        teacher, pretraining = result.get("teacher", {}).get(label, {}), result.get("pretraining", {}).get(label, {})
        study = result.get("study", {}).get(label, {})
        hours = study["seconds"] / 3600 if study.get("seconds") else None
        rows.append(goal(f"[{label}] the whole study, in GPU-hours", hours, STUDY_HOURS_GOAL, at_most=True))
        for crop in CROPS:
            speedup = teacher.get("speedup", {}).get(crop)
            rows.append(goal(f"[{label}] teacher, crop {crop}: fast path over the straightforward one", speedup,
                             TEACHER_SPEEDUP_GOAL, at_most=False))
            agree = teacher.get("agreement", {}).get(crop, {})
            worst = min(agree["mask_iou"], agree["cosine_mean"]) if agree else None
            rows.append(goal(f"[{label}] teacher, crop {crop}: agreement (the lower of masks' IoU and targets' cosine)",
                             worst, AGREEMENT_GOAL, at_most=False))
        rows.append(goal(f"[{label}] pretraining: images/s over float32's", pretraining.get("speedup"),
                         PRETRAINING_SPEED_GOAL, at_most=False))
        rows.append(goal(f"[{label}] pretraining: peak memory over float32's", pretraining.get("memory_ratio"),
                         PRETRAINING_MEMORY_GOAL, at_most=True))
    if "rehearsal" in result:
        rehearsal = result["rehearsal"]
        passed = sum(1 for name in NOTEBOOKS if name in rehearsal["notebook_seconds"])
        rows.append(goal("the rehearsal at GPU counts: notebooks passed, of 8", passed, len(NOTEBOOKS), at_most=False))
    if "check_seconds" in result:
        rows.append(goal("the whole check, in seconds", result["check_seconds"], CHECK_SECONDS_GOAL, at_most=True))
    return rows


def gpus(device: str) -> dict:
    """The number of GPUs; scaling over several is measured by the torchrun commands of docs/running.md, not here."""
    count = torch.cuda.device_count() if device.startswith("cuda") else 0
    words = {0: "no GPU (a CPU run)", 1: "1 GPU: nothing to scale over"}.get(
        count, f"{count} GPUs: scaling efficiency not measured by this check (run the torchrun commands of docs/running.md)")
    return {"count": count, "scaling": words}


def check_header(profile: Profile, device: str, variants: dict[str, Profile]) -> dict:
    """What every check's file begins with: where and with what it ran, and the settings it measured."""
    return provenance(profile, device) | {
        "weights": "random (times and bytes are those of trained weights; masks are not)",
        "torch_cuda": torch.version.cuda, "gpus": gpus(device),
        "variants": {label: settings(variant) for label, variant in variants.items()}, "step_seconds": {},
    }


def run(profile: Profile, n_images: int, n_reference: int, repeats: int, switches: dict = SWITCHES,
        save=lambda result: None, started: float | None = None) -> dict:
    """Every measurement, `save(result)` called after each step so that a check cut short keeps what was measured."""
    started = time.monotonic() if started is None else started
    device = resolve_device(profile.device)
    variants = {"profile": profile}
    with_switches = dataclasses.replace(profile, **switches)
    if with_switches != profile:
        variants["switches"] = with_switches
    result = check_header(profile, device, variants)

    def step(name, measure):
        start = time.monotonic()
        failure = measured(measure)
        if failure:  # recorded; the later steps run on what there is
            result.setdefault("step_failures", {})[name] = failure["failure"]
        result["step_seconds"][name] = time.monotonic() - start
        result["check_seconds"] = time.monotonic() - started
        result["goals"] = goals(result)
        save(result)

    def keep(name):
        def part(value):
            result[name] = value
            save(result)
        return part

    step("teacher", lambda: keep("teacher")(teacher_check(variants, device, n_images, n_reference, keep("teacher"))))
    dim = result.get("teacher", {}).get("embedder_dim")
    step("pretraining", lambda: keep("pretraining")(pretraining_check(variants, dim, device, repeats,
                                                                        keep("pretraining"))))
    step("study", lambda: keep("study")({label: measured(lambda: study_estimate(
        variant, dim, device, result["teacher"].get(label, {}), result["pretraining"].get(label, {})))
        for label, variant in variants.items()}))
    return result


def report(result: dict) -> str:
    teacher, pretraining, study = (result.get(name, {}) for name in ("teacher", "pretraining", "study"))
    s = result["settings"]
    lines = [f"GPU check, profile {result['profile']} ({s['image_size']} px, grid {s['grid']}, SAM {s['sam_model']}, "
             f"embedder {s['embedder']}), random weights, {result['device']}, {result['gpus']['scaling']}, commit "
             f"{result['git_commit']}"]
    for label, chosen in result["variants"].items():
        lines.append(f"setting [{label}]: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    for name, failure in result.get("step_failures", {}).items():
        lines.append(f"step {name} FAILED: {failure}")
    if teacher:
        lines.append(f"teacher, seconds per image ({teacher['images']['straightforward']} images straightforward, "
                     f"{teacher['images']['timed_fast']} timed on the fast path):")
    paths = {label: teacher[label] for label in ("straightforward", *result["variants"]) if label in teacher}
    for label, path in paths.items():
        if "failure" in path:
            lines.append(f"  {label:>15}: FAILED {path['failure']}")
            continue
        lines.append(f"  {label:>15}: " + ", ".join(f"{stage} {sec:.4f}" for stage, sec in path["seconds_per_image"].items()))
        if label != "straightforward":
            chosen = path["settings"]
            precisions = f"SAM {chosen['sam_precision']} ({chosen['sam_attention']} attention), embedder {chosen['precision']}"
            for crop, agree in path["agreement"].items():
                lines.append(f"  {'':>15}  crop {crop}: {path['speedup'][crop]:.2f}x; agreement with {precisions}: "
                             f"masks' mean IoU {agree['mask_iou']:.4f}, targets' cosine mean {agree['cosine_mean']:.4f},"
                             f" min {agree['cosine_min']:.4f}")
            disk = path["bytes_per_image"]
            lines.append(f"  {'':>15}  on disk per image: targets {disk['targets_per_crop_mode'] / 1e6:.3f} MB per crop "
                         f"mode, optional mask cache {disk['mask_cache'] / 1e6:.3f} MB")
    if pretraining:
        lines.append(f"pretraining (Lion, batch {s['batch_size']}):")
    for label, run_ in pretraining.items():
        if "failure" in run_:
            lines.append(f"  {label:>9}: FAILED {run_['failure']}")
            continue
        peak = "n/a on a CPU" if run_["peak_gib"] is None else f"{run_['peak_gib']:.2f} GiB"
        lines.append(f"  {label:>9}: {run_['images_per_s']:.1f} images/s, peak memory {peak}")
    for label, estimate in study.items():
        if "failure" in estimate:
            lines.append(f"study [{label}]: FAILED {estimate['failure']}")
            continue
        shares = ", ".join(f"{name[:2]} {format_seconds(seconds)}" for name, seconds in estimate["notebooks"].items())
        lines.append(f"study [{label}], estimated on this device: {format_seconds(estimate['seconds'])} ({shares}; "
                     f"'not timed here': no run of that notebook is estimated)")
    if "rehearsal" in result:
        lines.append(rehearsal_line(result["rehearsal"]))
    lines.append("goals:")
    for row in result["goals"]:
        value = "n/a" if row["measured"] is None else f"{row['measured']:.3g}"
        ratio = "" if row["ratio"] is None else f", {row['ratio']:.2f} of the target"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
        lines.append(f"  {verdict:>12}: {row['goal']}: {value} against {row['target']:g}{ratio}")
    lines.append(f"the check took {result['check_seconds']:.0f} s of its {CHECK_SECONDS_GOAL:.0f} s budget "
                 f"({', '.join(f'{k} {v:.0f} s' for k, v in result['step_seconds'].items())})")
    return "\n".join(lines)


def rehearsal_line(rehearsal: dict) -> str:
    done = ", ".join(f"{name[:2]} {seconds:.0f} s" for name, seconds in rehearsal["notebook_seconds"].items())
    outcome = "passed" if rehearsal["passed"] else f"STOPPED: {rehearsal['stopped']}"
    return f"rehearsal at GPU counts: {outcome} ({done or 'no notebook finished'})"


def rehearse(overrides: dict, deadline: float, save=lambda rehearsal: None) -> dict:
    """The rehearsal profile's notebooks at GPU counts (executed copies under runs/gpu-rehearsal/), one by one while
    time.monotonic() < deadline - REHEARSAL_RESERVE: each notebook's seconds, and the failure or budget that
    stopped them; `save` after each notebook."""
    folder = artefacts.runs_dir("gpu-rehearsal")
    settings_ = GPU_REHEARSAL | overrides
    rehearsal = {"overrides": settings_, "notebook_seconds": {}, "passed": False}
    for name in NOTEBOOKS:
        left = deadline - time.monotonic()
        if left < REHEARSAL_RESERVE:
            rehearsal["stopped"] = f"{name} not started: {left:.0f} s of the check's budget left"
            break
        try:
            rehearsal["notebook_seconds"] |= run_study("rehearsal", settings_, results_dir=folder / "results",
                                                       runs_dir=folder, notebooks=(name,))
        except NotebookFailed as error:
            rehearsal["stopped"] = str(error)
            break
        save(rehearsal)
    else:
        rehearsal["passed"] = True
    save(rehearsal)
    return rehearsal


def output_path(folder: Path, device: str) -> Path:
    return Path(folder) / (re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") + ".json")


def main(argv=None):
    now, wall = time.monotonic(), time.time()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_arguments(parser, "paper")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny SAM and the embedded profile's other sizes: runs anywhere in seconds, times "
                             "nothing real (the switches without compile, whose compilation takes minutes on a CPU)")
    parser.add_argument("--images", type=int, default=40, help="images through the fast path (the first batch warms up)")
    parser.add_argument("--reference-images", type=int, default=8, help="images through the straightforward path")
    parser.add_argument("--repeats", type=int, default=5, help="timed pretraining steps per setting")
    parser.add_argument("--out", default="results/gpu", help="folder of the JSON file named after the device")
    parser.add_argument("--rehearse", action="store_true", help="then run the rehearsal profile's notebooks at GPU "
                        "counts while the budget lasts (--set overrides apply to both)")
    parser.add_argument("--rehearse-only", action="store_true", help="the rehearsal alone (steps 4 and 5), written "
                        "beside the whole check's file as <device>-rehearsal.json: all of a short GPU session for the "
                        "notebooks, once steps 1-3 are measured (make gpu-rehearsal)")
    parser.add_argument("--budget", type=float, default=CHECK_SECONDS_GOAL,
                        help="seconds for the whole check; the rehearsal starts no notebook after it")
    parser.add_argument("--started-at", type=float, default=None,
                        help="the check's start, in seconds since the epoch (date +%%s), if it began before this "
                             "command (the set-up of make gpu-check); default: now")
    args = parser.parse_args(argv)
    started = now - (wall - args.started_at if args.started_at else 0.0)
    try:
        tiny = {"teacher": "sam", "sam_model": "tiny", "random_weights": True} if args.tiny else {}
        profile = get_profile("embedded" if args.tiny else args.profile, **tiny | parse_overrides(args.overrides))
        device = resolve_device(profile.device)
    except SettingsError as error:
        return refuse(error)
    path = output_path(args.out, device_name(device) + (" rehearsal" if args.rehearse_only else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    save = lambda result: artefacts.write_json(path, result)  # noqa: E731
    if args.rehearse_only:
        result = check_header(profile, device, variants={})
    else:
        result = run(profile, args.images, args.reference_images, args.repeats,
                     TINY_SWITCHES if args.tiny else SWITCHES, save, started)
    if args.rehearse or args.rehearse_only:
        def save_rehearsal(rehearsal):
            result["rehearsal"] = rehearsal
            result["check_seconds"] = time.monotonic() - started
            result["goals"] = goals(result)
            save(result)

        rehearse(parse_overrides(args.overrides), started + args.budget, save_rehearsal)
        result["step_seconds"]["rehearsal"] = sum(result["rehearsal"]["notebook_seconds"].values())
    result["check_seconds"] = time.monotonic() - started
    result["goals"] = goals(result)
    save(result)
    print(report(result))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
