"""Data efficiency: accuracy on val against the share of labelled training images.

The paper concludes "extreme data efficiency; we do not require any class labels ... during the pre-training
phase". Measured here: every method trains its labelled phases on the same seeded subsets of the 80% fit set and
is scored on the val folder. Distillation pretrains without labels on every fit image, so only its probe sees a
subset; SupCon needs labels in its pretraining, so both of its phases see the subset; XResNet trains from random
weights on the subset. Each run keeps its recipe's epochs, so its optimiser steps shrink with the subset (recorded
beside each point, with the plateau verdict).
"""
import numpy as np


def labelled_subsets(fit_idx: np.ndarray, labels: np.ndarray, fractions, seed: int) -> dict[float, np.ndarray]:
    """{fraction: indices}: nested, class-balanced subsets of `fit_idx` (each class's images in one seeded order,
    a fraction taking the first round(fraction x n) of each class, at least one), the same for every method."""
    fit_idx = np.asarray(fit_idx)
    rng = np.random.default_rng(seed)
    by_class = {c: rng.permutation(fit_idx[labels[fit_idx] == c]) for c in np.unique(labels[fit_idx])}
    return {float(f): np.sort(np.concatenate([members[: max(1, round(f * len(members)))]
                                              for members in by_class.values()])) for f in fractions}


def subset_features(features: dict, fit_idx: np.ndarray, subset: np.ndarray) -> dict:
    """Probe features ({split: (features, labels)}, "fit" in the order of `fit_idx`) with "fit" cut to `subset`."""
    fit, labels = features["fit"]
    keep = np.isin(fit_idx, subset)
    return features | {"fit": (fit[keep], labels[keep])}


def subset_splits(splits: dict, subset: np.ndarray) -> dict:
    """Probe splits ({split: (pixels, indices, labels)}) with the "fit" indices replaced by `subset`."""
    pixels, _, labels = splits["fit"]
    return splits | {"fit": (pixels, subset, labels)}


def table_rows(curves: dict[str, dict[float, dict]]) -> list[list[str]]:
    """One row per fraction: labelled images, then each method's val accuracy with its optimiser steps."""
    fractions = sorted({f for points in curves.values() for f in points})
    rows = []
    for f in fractions:
        images = next(points[f]["images"] for points in curves.values() if f in points)
        rows.append([f"{100 * f:g}%", images] + [
            f"{100 * curves[m][f]['val']:.1f}% ({curves[m][f]['steps']} steps)" if f in curves[m] else ""
            for m in curves])
    return rows
