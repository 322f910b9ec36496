"""The paper's method, in its order: SAM prompted on a grid of points gives masks at three levels, the mask embedder
turns each masked image into a target, the Agglomerator regresses them, a linear probe reads its top level.

- `prompts`: the prompt grid, point labels, level order
- `sam`: SAM: building it, the straightforward and the fast teacher paths
- `teachers`: the ground-truth teacher, and the teacher a profile names
- `embedder`: the mask embedder (a timm model and its own transform), masking, distinct masks, weights files
- `targets`: manifests, resumable sharded target building, the mask cache
- `model`: the Agglomerator (its iteration step by step), the levels encoder and the probe head
- `train`: fastai Learners: distillation pretraining and the probe (Lion, the schedules), checkpoints
- `speedups`: switches that change no result beyond rounding: SAM's attention through SDPA, the Agglomerator's
  iterations recomputed in backward, Lion's step on all parameters at once
"""
from .prompts import LEVELS, point_grid
from .sam import SamTeacher
from .teachers import make_teacher, teacher_masks
from .embedder import MaskEmbedder, masked_image
from .targets import build_targets, load_targets
from .model import Agglomerator, AgglomeratorConfig, Classifier, Distiller, ProbeHead
from .train import LevelWeightedMSE, pretrain, probe_features

__all__ = ["Agglomerator", "AgglomeratorConfig", "Classifier", "Distiller", "LEVELS", "LevelWeightedMSE",
           "MaskEmbedder", "ProbeHead", "SamTeacher", "build_targets", "load_targets", "make_teacher", "masked_image",
           "point_grid", "pretrain", "probe_features", "teacher_masks"]
