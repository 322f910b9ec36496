"""The paper's baselines: supervised contrastive pretraining (Table 3) and XResNet (Table 4).

- `contrastive`: Table 3's baseline: supervised contrastive pretraining with RandAugment, the original configuration
- `xresnet`: Table 4's baseline: the leaderboard entries' xse_resnext50 with MaxBlurPool
- `runs`: notebook 05's runs, each a function of a study (so that they train side by side): SupCon, XResNet per size,
  the data-efficiency curve's runs on a labelled share
"""
from .contrastive import ContrastiveAgglomerator

__all__ = ["ContrastiveAgglomerator"]
