"""The two costly steps on several GPUs, under torchrun (one process per GPU):

    torchrun --nproc_per_node 8 -m partwhole.scale.multigpu targets --profile paper
    torchrun --nproc_per_node 8 -m partwhole.scale.multigpu pretrain --profile paper --name crop_none
    torchrun --nproc_per_node 8 -m partwhole.scale.multigpu pretrain --profile paper --name crop_bbox --set crop=bbox

`targets` shares each split's chunks of images between the ranks and rank 0 assembles them (build_targets).
`pretrain` trains with fastai's DistributedDataParallel support (needs the `accelerate` package, the `multigpu`
extra), set up in `partwhole.core.distributed` so that the ranks train as one process does. Rank 0 writes the run's
resumable checkpoint under the name the notebooks use (`pretraining-<name>-state`), so that a notebook's
`Study.pretrain_and_probe` then finds the pretraining finished and goes on to the probe. The notebooks' run
names: crop_none (03), crop_bbox and crop_none-levels_encoder (04, with --set levels_encoder=true). Without
torchrun, both run in one process. On CPUs (gloo) the same code runs, for tests.
"""
import argparse

import torch.distributed as dist

from ..core.distributed import rank0_first, setup
from ..method.train import fit, pretraining_learner
from ..study.profiles import SettingsError, add_profile_arguments, parse_overrides, refuse
from ..study.study import Study


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("targets", "pretrain"))
    add_profile_arguments(parser, "paper")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="targets: the splits to build")
    parser.add_argument("--name", help="pretrain: the run's name in the notebooks, e.g. crop_none")
    parser.add_argument("--runs-dir", help="where image caches, targets and checkpoints go (default runs/<profile>)")
    args = parser.parse_args(argv)
    if args.step == "pretrain" and not args.name:
        parser.error("pretrain needs --name, the run's name in the notebooks (e.g. crop_none)")
    try:
        study = Study(args.profile, parse_overrides(args.overrides), runs_dir=args.runs_dir)
    except SettingsError as error:
        return refuse(error)
    setup()
    try:
        if args.step == "targets":
            for split in args.splits:
                rank0_first(lambda: study.pixels(split))
                study.build_targets(split)
        else:
            profile = study.profile
            rank0_first(lambda: study.targets("train", profile.crop))
            fit_idx, holdout_idx = study.holdout()
            learn = pretraining_learner(profile, study.pixels("train"), study.targets("train", profile.crop), fit_idx,
                                        holdout_idx, study.device)
            with study.exclusive(f"pretraining {args.name}"):
                fit(learn, profile, profile.pretrain_epochs, study.checkpoint(f"pretraining-{args.name}-state"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
