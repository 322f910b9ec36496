"""Run the study: execute the numbered notebooks in order with papermill for one profile.

    python -m partwhole.runner                      # the embedded default, offline, CPU minutes
    python -m partwhole.runner --profile paper      # the paper's setting (GPU, internet for downloads)
    python -m partwhole.runner --profile paper --dry-run
    python -m partwhole.runner --set pretrain_epochs=2 --set seed=1
    python -m partwhole.runner --seeds 3               # training notebooks for 3 seeds; tables give mean ± std

Executed copies go to results/<profile>/ beside the metrics, tables and figures the notebooks write.
Before any notebook runs, every download the profile needs is fetched or found, so an offline paper run
fails at once with instructions rather than hours in.
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import papermill
import timm

from . import paths
from .controls import CONTROLS, can_run
from .costs import format_seconds, study_runs
from .profiles import Profile, get_profile, parse_overrides
from .results import device_name
from .train import resolve_device

NOTEBOOKS = (
    "01_teacher_masks.ipynb",
    "02_mask_embeddings.ipynb",
    "03_pretraining_and_probe.ipynb",
    "04_ablations.ipynb",
    "05_baselines.ipynb",
    "06_islands.ipynb",
    "07_controls.ipynb",
    "08_tables.ipynb",
)
# Rerun for every further seed: the runs whose numbers depend on the seed. Data, teacher and targets do not.
SEEDED = ("03_pretraining_and_probe.ipynb", "04_ablations.ipynb", "05_baselines.ipynb", "06_islands.ipynb",
          "07_controls.ipynb")
TABLES = "08_tables.ipynb"  # last, once every seed has run


def downloads(profile: Profile) -> list[dict]:
    """What the profile needs from the internet: name, size, where it comes from, and how to get it."""
    from .teacher import SAM_CHECKPOINTS

    needed = []
    if profile.dataset == "imagenette" and profile.dataset_path is None:
        needed.append({"what": "Imagenette 2, full size (fastai URLs.IMAGENETTE)", "size": "1.5 GB",
                       "fetch": lambda: _imagenette(profile)})
    if profile.teacher == "sam":
        checkpoint = SAM_CHECKPOINTS[profile.sam_model]
        needed.append({"what": f"SAM {profile.sam_model} checkpoint {checkpoint.filename} ({checkpoint.url})",
                       "size": checkpoint.approx_size, "fetch": lambda: _sam_checkpoint(profile)})
    if profile.embedder_pretrained:
        needed.append({"what": f"timm weights {profile.embedder} (Hugging Face hub)", "size": "tens of MB",
                       "fetch": lambda: _embedder(profile)})
    for control in CONTROLS:  # a control with an embedder of its own (notebook 07)
        embedder = control.overrides.get("embedder")
        if embedder and can_run(control, profile):
            control_profile = dataclasses.replace(profile, **control.overrides)
            needed.append({"what": f"timm weights {embedder} (Hugging Face hub), for the control {control.name}",
                           "size": "tens of MB", "fetch": lambda p=control_profile: _embedder(p)})
    return needed


def _imagenette(profile):
    from .data import imagenette_root

    return imagenette_root(profile.dataset_path)


def _sam_checkpoint(profile):
    from .teacher import sam_checkpoint

    return sam_checkpoint(profile.sam_model, paths.project_root() / profile.sam_checkpoint_dir)


def _embedder(profile):
    from .targets import MaskEmbedder

    return MaskEmbedder.from_profile(profile, "cpu")


def plan(profile: Profile) -> list[str]:
    """Every step of the study for this profile, in order, with its size."""
    data = (f"generate {profile.train_per_class}+{profile.val_per_class} scenes per class at {profile.image_size} px"
            if profile.dataset == "synthetic" else f"Imagenette at {profile.image_size} px (9,469 train / 3,925 val)")
    points = profile.grid**2
    return [
        f"data: {data}; decode once into a uint8 cache",
        f"01 teacher masks: {profile.teacher} teacher, {points} points x {profile.levels} levels per image",
        f"02 mask embeddings: {profile.embedder} (pretrained={profile.embedder_pretrained}), crop modes none+bbox "
        f"from one teacher pass, train and val",
        f"03 pretraining: Agglomerator grid {profile.grid}, dim {profile.patch_dim}, {profile.pretrain_epochs} epochs, "
        f"batch {profile.batch_size}, Lion lr {profile.lr} wd {profile.wd}; probe {profile.probe_epochs} epochs; "
        "and the same probe on a randomly initialised Agglomerator",
        "04 ablations: pretraining + probe with crop=bbox (Table 1) and with the levels encoder (Table 2)",
        f"05 baselines: supervised contrastive pretraining with RandAugment ({', '.join(profile.contrastive_configs)} "
        f"configuration, {profile.contrastive_epochs} epochs; Table 3); fastai xresnet50 at "
        f"{', '.join(map(str, profile.xresnet_sizes))} px, {profile.xresnet_epochs} epochs (Table 4)",
        "06 islands: Figure 4, each level's columns as colours, student beside teacher",
        "07 controls: where the targets' information comes from (random embedder, no SAM, shuffled masks, the "
        "embedder's own features, a self-supervised embedder), each pretrained and probed as in 03",
        "08 tables: Tables 1-4 and the controls, the paper's numbers beside the measured ones, from the metrics files",
    ]


def print_runs(profile: Profile):
    """Every run Tables 1-4 need, with its cost on this device: timed on a GPU, or for the embedded profile;
    timing the paper's models on a CPU would say nothing about the GPU they will run on."""
    device = resolve_device(profile.device)
    timed = device.startswith("cuda") or profile.dataset == "synthetic"
    target_dim = timm.create_model(profile.embedder, pretrained=False, num_classes=0, **profile.embedder_kwargs).num_features
    runs = study_runs(profile, target_dim, device if timed else None)
    where = f"estimated on {device_name(device)}" if timed else "run the dry run on the GPU you will use for estimates"
    print(f"runs ({where}):")
    for run in runs:
        epochs = f"{run.epochs} epoch" + ("s" if run.epochs != 1 else "")
        print(f"  {run.notebook} {run.name}: {run.images} images x {epochs}, {format_seconds(run.seconds)}")
    known = [run.seconds for run in runs if run.seconds is not None]
    if timed and known:
        print(f"  total of the timed runs: {format_seconds(sum(known))}")


def preflight(profile: Profile) -> list[str]:
    """Fetch or find every download; returns the error messages of those that failed."""
    failures = []
    for item in downloads(profile):
        try:
            item["fetch"]()
        except Exception as error:  # each failure carries its own instructions
            failures.append(f"- {item['what']} [{item['size']}]:\n  {error}")
    return failures


class NotebookFailed(RuntimeError):
    pass


def run_study(profile_name: str = "embedded", overrides: dict | None = None, results_dir=None, runs_dir=None,
              notebooks=NOTEBOOKS, seeds: int = 1) -> Path:
    """Execute the notebooks in order; returns the folder with the executed copies.

    With seeds > 1, the seeded notebooks run again for the profile's seed + 1, + 2, ..., each seed's executed
    copies, metrics and figures in results/<profile>/seeds/seed_<s>/, before the tables notebook pools them."""
    overrides = overrides or {}
    profile = get_profile(profile_name, **overrides)
    results_dir = Path(results_dir) if results_dir else paths.results_dir(profile.name)
    runs = str(Path(runs_dir).resolve()) if runs_dir else None
    for name in notebooks:
        if name != TABLES:
            _execute(name, profile_name, overrides, results_dir, runs)
    for seed in range(profile.seed + 1, profile.seed + seeds):
        for name in notebooks:
            if name in SEEDED:
                _execute(name, profile_name, overrides | {"seed": seed}, results_dir / "seeds" / f"seed_{seed}", runs)
    if TABLES in notebooks:
        _execute(TABLES, profile_name, overrides, results_dir, runs)
    return results_dir


def _execute(name: str, profile_name: str, overrides: dict, results_dir: Path, runs_dir: str | None):
    results_dir.mkdir(parents=True, exist_ok=True)
    label = f"[{profile_name}, seed {overrides['seed']}]" if "seed" in overrides else f"[{profile_name}]"
    parameters = {"profile": profile_name, "overrides": overrides, "results_dir": str(results_dir.resolve()),
                  "runs_dir": runs_dir}
    start = time.perf_counter()
    print(f"{label} {name} ...", flush=True)
    try:
        papermill.execute_notebook(paths.project_root() / "notebooks" / name, results_dir / name,
                                   parameters=parameters, cwd=paths.project_root() / "notebooks", progress_bar=False)
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(
            f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
            f"The executed copy, up to the failing cell, is kept for inspection: {results_dir / name}"
        ) from error
    print(f"{label} {name} done in {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field (JSON value), repeatable")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and downloads, run nothing")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run the training notebooks for this many seeds (the profile's seed, +1, ...); the tables "
                             "report mean ± standard deviation")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    profile = get_profile(args.profile, **overrides)

    print(f"profile {profile.name}: " + json.dumps(overrides or "defaults"))
    for step in plan(profile):
        print("  " + step)
    if args.seeds > 1:
        print(f"  then {', '.join(name[:2] for name in SEEDED)} again for seeds {profile.seed + 1} to "
              f"{profile.seed + args.seeds - 1}, and the tables with mean ± standard deviation")
    if args.dry_run:
        print_runs(profile)
    needed = downloads(profile)
    print("downloads: " + ("none (offline)" if not needed else ""))
    for item in needed:
        print(f"  {item['what']} [{item['size']}]")
    if args.dry_run:
        return 0
    failures = preflight(profile)
    if failures:
        print("Cannot start: these downloads are missing and could not be fetched:\n" + "\n".join(failures),
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        out = run_study(args.profile, overrides, seeds=args.seeds)
    except NotebookFailed as error:
        print(error, file=sys.stderr)
        return 1
    print(f"study finished in {time.perf_counter() - start:.0f} s; executed notebooks and results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
