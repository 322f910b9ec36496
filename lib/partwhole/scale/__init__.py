"""The study's speed: the GPU check (benchmark), the CPU check beside a busy machine, several GPUs under torchrun.

- `benchmark`: the GPU check: teacher and pretraining speed, memory and disk (python -m partwhole.scale.benchmark)
- `busy_machine`: the CPU check: a notebook's time on a quiet machine and beside a busy process, and the ratio
  (python -m partwhole.scale.busy_machine)
- `multigpu`: the command line for targets and pretraining on several GPUs (or CPU processes) (torchrun -m
  partwhole.scale.multigpu)
"""
