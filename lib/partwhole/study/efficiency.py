"""Data efficiency: accuracy on val against the share of labelled training images.

The paper concludes "extreme data efficiency; we do not require any class labels ... during the pre-training
phase". Measured here: every method trains its labelled phases on the same seeded subsets of the 80% fit set and
is scored on the val folder. Distillation pretrains without labels on every fit image, so only its probe sees a
subset; SupCon needs labels in its pretraining, so both of its phases see the subset; XResNet trains from random
weights on the subset. Every labelled phase gets the same budget at every share: the subset is repeated to the fit
set's length (`repeated`), so a run on 1% of the images takes as many epochs and optimiser steps as on 100% (a small
subset seen in a few steps would measure the schedule's length, not the method).
"""
import numpy as np
import torch


def labelled_subsets(fit_idx: np.ndarray, labels: np.ndarray, fractions, seed: int) -> dict[float, np.ndarray]:
    """{fraction: indices}: nested, class-balanced subsets of `fit_idx` (each class's images in one seeded order,
    a fraction taking the first round(fraction x n) of each class, at least one), the same for every method."""
    fit_idx = np.asarray(fit_idx)
    rng = np.random.default_rng(seed)
    by_class = {c: rng.permutation(fit_idx[labels[fit_idx] == c]) for c in np.unique(labels[fit_idx])}
    return {float(f): np.sort(np.concatenate([members[: max(1, round(f * len(members)))]
                                              for members in by_class.values()])) for f in fractions}


def repeated(subset: np.ndarray, length: int) -> np.ndarray:
    """`subset` repeated cyclically to `length` indices (never cut): the fit set's length, so that one epoch on it
    is as many optimiser steps as one on the whole fit set."""
    return np.resize(subset, max(length, len(subset)))


def subset_features(features: dict, fit_idx: np.ndarray, subset: np.ndarray) -> dict:
    """Probe features ({split: (features, labels)}, "fit" in the order of `fit_idx`) with "fit" the rows of
    `subset`, in its order and with its repeats."""
    fit, labels = features["fit"]
    row_of = {index: row for row, index in enumerate(fit_idx.tolist())}
    rows = torch.as_tensor([row_of[index] for index in np.asarray(subset).tolist()])
    return features | {"fit": (fit[rows], labels[rows])}


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
