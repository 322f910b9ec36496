"""Part-whole distillation: SAM masks -> mask embeddings -> Agglomerator pretraining -> linear probe.

The package in folders by role, lowest first (FOLDERS): a module imports from its own folder and the folders
before it, never from one after it. Each folder's __init__ lists its modules and public names.

- core/: What every folder uses: files, devices, processes, downloads, figures, timing.
- datasets/: The images: Imagenette's folders and the generated part-whole scenes, cached as uint8 arrays.
- method/: The paper's method, in its order: SAM prompted on a grid of points gives masks at three levels, the mask
  embedder turns each masked image into a target, the Agglomerator regresses them, a linear probe reads its top level.
- study/: One profile's study: its settings, the Study that wires its data, teacher, embedder, targets and runs, its
  result files; the embedded profile's embedder.
- baselines/: The paper's baselines: supervised contrastive pretraining (Table 3) and XResNet (Table 4).
- analysis/: What the runs are checked with: the teacher paths' agreement, the islands, the controls, the embedded
  study's report.
- workflow/: The study end to end: every run's cost, planned before, and the runner that executes the notebooks in
  order.
- scale/: The study's speed: the GPU check (benchmark), the CPU check beside a busy machine, several GPUs under torchrun.

Commands: python -m partwhole.workflow.runner (the study), python -m partwhole.scale.benchmark (the GPU check),
python -m partwhole.scale.busy_machine (the CPU check),
torchrun -m partwhole.scale.multigpu (several GPUs), python -m partwhole.study.embedder_training (the shipped embedder).
"""
import warnings

with warnings.catch_warnings():  # fastai decorates a few of its helpers with torch.jit.script, which torch deprecates
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    import fastai.torch_basics  # noqa: F401  (the one import of fastai that runs them; later ones find it loaded)

from .method.model import Agglomerator, AgglomeratorConfig, Classifier, Distiller, ProbeHead
from .study.profiles import Profile, get_profile
from .study.study import Study

FOLDERS = ("core", "datasets", "method", "study", "baselines", "analysis", "workflow", "scale")  # lowest first

__all__ = ["Agglomerator", "AgglomeratorConfig", "Classifier", "Distiller", "ProbeHead", "Profile", "Study",
           "get_profile"]
