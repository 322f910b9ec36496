"""What every folder uses: files, devices, processes, downloads, figures, timing.

- `artefacts`: paths, atomic writes, reading back with damaged-file errors, settings checks
- `devices`: device, autocast, batches that halve on out-of-memory
- `distributed`: several processes under torchrun training as one: batch shares, synced BatchNorm
- `downloads`: Imagenette, SAM checkpoints and timm weights: what a profile needs, fetched and checked
- `plots`: figures
- `timing`: a training run's cost, timed on a few steps before it starts
- `workers`: independent runs side by side, one process per CPU core and one thread each
"""
from .artefacts import DamagedFile, data_dir, project_root
from .devices import device_name, resolve_device

__all__ = ["DamagedFile", "data_dir", "device_name", "project_root", "resolve_device"]
