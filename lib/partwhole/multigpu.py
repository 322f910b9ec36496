"""The two costly steps on several GPUs, under torchrun (one process per GPU):

    torchrun --nproc_per_node 8 -m partwhole.multigpu targets --profile paper
    torchrun --nproc_per_node 8 -m partwhole.multigpu pretrain --profile paper --name crop_none
    torchrun --nproc_per_node 8 -m partwhole.multigpu pretrain --profile paper --name crop_bbox --set crop=bbox

`targets` shares each split's chunks of images between the ranks and rank 0 assembles them (build_targets).
`pretrain` trains with fastai's DistributedDataParallel support (needs the `accelerate` package): each rank takes
batch_size / world images per step, so steps and schedule are a one-GPU run's (the loss history is rank 0's
share), and rank 0 writes the run's resumable checkpoint under the name the notebooks use
(`pretraining-<name>-state`), so that a notebook's `Study.pretrain_and_probe(name)` then finds the pretraining
finished and goes on to the probe. The notebooks' run names: crop_none (03), crop_bbox and
crop_none-levels_encoder (04, with --set levels_encoder=true). Without torchrun, both run in one process.
"""
import argparse
import dataclasses
import os

import torch
import torch.distributed as dist

from .profiles import parse_overrides
from .study import Study
from .train import fit, pretraining_learner


def setup():
    """Joins torchrun's process group (NCCL on GPUs, gloo on CPUs) and makes this rank's GPU the current one, so
    that the profile's device ("auto", i.e. "cuda") means it and the settings a checkpoint records stay those of
    a one-process run."""
    if "LOCAL_RANK" not in os.environ:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank0_first(make):
    """make() on rank 0 before the others, for what writes shared files (downloads, image caches)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        make()
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        make()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("targets", "pretrain"))
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field (JSON value), repeatable")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="targets: the splits to build")
    parser.add_argument("--name", help="pretrain: the run's name in the notebooks, e.g. crop_none")
    parser.add_argument("--runs-dir", help="where image caches, targets and checkpoints go (default runs/<profile>)")
    args = parser.parse_args(argv)
    setup()
    study = Study(args.profile, parse_overrides(args.overrides), runs_dir=args.runs_dir)
    try:
        if args.step == "targets":
            for split in args.splits:
                rank0_first(lambda: study.pixels(split))
                study.build_targets(split)
        else:
            if not args.name:
                parser.error("pretrain needs --name, the run's name in the notebooks (e.g. crop_none)")
            profile = study.profile
            rank0_first(lambda: study.targets("train", profile.crop))
            fit_idx, holdout_idx = study.holdout()
            # each rank takes its share of every step's batch_size images: the steps of a one-GPU run
            world = dist.get_world_size() if dist.is_initialized() else 1
            per_rank = dataclasses.replace(profile, batch_size=profile.batch_size // world)
            learn = pretraining_learner(per_rank, study.pixels("train"), study.targets("train", profile.crop), fit_idx,
                                        holdout_idx, study.device)
            fit(learn, profile, profile.pretrain_epochs, study.checkpoint(f"pretraining-{args.name}-state"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
