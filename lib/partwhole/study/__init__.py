"""One profile's study: its settings, the Study that wires its data, teacher, embedder, targets and runs, its result
files; the embedded profile's embedder.

- `profiles`: the paper's settings, each with its reason; the embedded and rehearsal profiles' differences
- `study`: one profile's data, teacher, embedder, targets and runs wired together, used by every notebook
- `results`: metrics files with provenance, the paper's numbers, tables
- `efficiency`: the data-efficiency curve's labelled subsets, the same for every method
- `embedder_training`: the embedded profile's embedder weights, made again (python -m partwhole.study.embedder_training)
"""
from .profiles import Profile, SettingsError, get_profile
from .results import provenance, read_metrics, write_metrics
from .study import Study

__all__ = ["Profile", "SettingsError", "Study", "get_profile", "provenance", "read_metrics", "write_metrics"]
