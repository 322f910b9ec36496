"""On GPUs: the GPU check (benchmark) and the command line for several GPUs under torchrun.

- `benchmark`: the GPU check: teacher and pretraining speed, memory and disk (python -m partwhole.scale.benchmark)
- `multigpu`: the command line for targets and pretraining on several GPUs (or CPU processes) (torchrun -m
  partwhole.scale.multigpu)
"""
