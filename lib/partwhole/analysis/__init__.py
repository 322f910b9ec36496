"""What the runs are checked with: the teacher paths' agreement, the islands, the controls, the embedded study's report.

- `agreement`: the fast teacher path against the straightforward one (mask IoU, target cosine)
- `islands`: Figure 4: islands of agreement, a deterministic PCA colouring per level; the island metric
- `controls`: the controls: what the targets owe to the embedder, the masks, their fit, the arrangement
- `miniature`: the embedded study's goals beside their targets (results/embedded/miniature.md)
"""
from .islands import islands_table
from .controls import CONTROLS, ControlStudy, controls_table

__all__ = ["CONTROLS", "ControlStudy", "controls_table", "islands_table"]
