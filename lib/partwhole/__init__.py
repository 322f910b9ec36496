"""Part-whole distillation: SAM masks -> mask embeddings -> Agglomerator pretraining -> linear probe.

The public API, in the order of the method (each module owns one job; the notebooks use these names):

- profiles: `Profile`, `get_profile` (the paper's settings, and the embedded and rehearsal profiles' differences)
- study: `Study`, one profile's data, teacher, embedder, targets and runs wired together
- model: `Agglomerator`, `AgglomeratorConfig`, `Distiller` (pretraining), `Classifier` / `ProbeHead` (the probe)
- teachers.make_teacher, sam.SamTeacher, embedder.MaskEmbedder, targets.build_targets: the distillation targets
- train.pretrain, train.probe_features: the two training phases
- runner (`python -m partwhole.runner`), benchmark (`python -m partwhole.benchmark`), multigpu (under torchrun)
"""
import warnings

with warnings.catch_warnings():  # fastai decorates a few of its helpers with torch.jit.script, which torch deprecates
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    import fastai.torch_basics  # noqa: F401  (the one import of fastai that runs them; later ones find it loaded)

from .model import Agglomerator, AgglomeratorConfig, Classifier, Distiller, ProbeHead
from .profiles import Profile, get_profile
from .study import Study

__all__ = ["Agglomerator", "AgglomeratorConfig", "Classifier", "Distiller", "ProbeHead", "Profile", "Study",
           "get_profile"]
