"""Islands of agreement (paper Fig. 4): every column's vector at one level drawn as a colour.

A level's vectors are projected on their first three principal components, each scaled to [0, 1] and shown
as red, green and blue. There is one projection per level, fitted once on all the columns a figure shows, so a
colour means the same vector in every image of that figure. Columns that agree (an island: the columns on one
part, or on one whole) share a colour.
"""
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import sparse
from scipy.sparse import csgraph
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from ..core.devices import frozen_on
from ..method.train import to_model_input
from ..study.results import markdown_table, source_of

LEVEL_NAMES = ("subpart", "part", "whole")


def level_name(level: int, n_levels: int) -> str:
    """A level's title: "level 0 (subpart)" with the paper's three levels, plain "level 3" with more."""
    return f"level {level} ({LEVEL_NAMES[level]})" if n_levels == len(LEVEL_NAMES) else f"level {level}"


@dataclass(frozen=True)
class Projection:
    """Centring, principal directions (k, D) and the range of the fitted data along each, for colours in [0, 1]."""

    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """(..., D) -> (..., k) in [0, 1]; vectors outside the fitted range are clipped to its ends."""
        scores = (np.asarray(vectors, dtype=np.float64) - self.mean) @ self.components.T
        span = np.where(self.high > self.low, self.high - self.low, 1.0)  # a constant direction maps to 0
        return np.clip((scores - self.low) / span, 0.0, 1.0)


def fit_projection(vectors: np.ndarray, n_components: int = 3) -> Projection:
    """PCA of (N, D) vectors (scikit-learn's, which makes each direction's largest-magnitude loading positive, so the
    colours do not depend on the signs SVD happens to return). Fewer than `n_components` directions (tiny data) are
    padded with zero directions."""
    x = np.asarray(vectors, dtype=np.float64)
    components, mean = np.zeros((n_components, x.shape[1])), x.mean(axis=0)
    if np.ptp(x, axis=0).any():  # constant data have no direction: every colour is the same
        k = min(n_components, *x.shape)
        components[:k] = PCA(n_components=k, svd_solver="full").fit(x).components_
    scores = (x - mean) @ components.T
    return Projection(mean, components, scores.min(axis=0), scores.max(axis=0))


def fit_level_projections(levels: np.ndarray) -> list[Projection]:
    """One projection per level, fitted on that level's columns of all images: levels (n_images, P, L, D)."""
    return [fit_projection(levels[:, :, level].reshape(-1, levels.shape[-1])) for level in range(levels.shape[2])]


def level_colours(levels: np.ndarray, projections: list[Projection]) -> np.ndarray:
    """(n_images, P, L, D) -> (n_images, L, grid, grid, 3) RGB in [0, 1]; columns are row-major (P = grid^2)."""
    n, P, L, _ = levels.shape
    grid = round(P**0.5)
    if grid * grid != P:
        raise ValueError(f"{P} columns do not form a square grid")
    rgb = np.stack([projections[level](levels[:, :, level]) for level in range(L)], axis=1)  # (n, L, P, 3)
    return rgb.reshape(n, L, grid, grid, -1)


@torch.inference_mode()
def column_levels(backbone, pixels: np.ndarray, device: str) -> np.ndarray:
    """The Agglomerator's levels (n_images, P, L, D) for uint8 images (n, H, W, 3), in eval mode."""
    backbone = frozen_on(backbone, device)
    return backbone(to_model_input(pixels).to(device)).float().cpu().numpy()


def island_agreement(levels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per level, how alike two models' islands are: the correlation between their column-to-column cosine
    similarities (off the diagonal), averaged over images. 1: the same columns agree in both; 0: unrelated.

    Compares which columns agree, not the vectors, so it also applies to a model whose space is not the
    reference's (a levels encoder, a random initialisation)."""
    def similarities(x):  # (n, P, L, D) -> (n, L, P, P)
        unit = torch.nn.functional.normalize(torch.as_tensor(np.asarray(x, dtype=np.float32)), dim=-1)
        return torch.einsum("nild,njld->nlij", unit, unit)

    a, b = similarities(levels), similarities(reference)
    off_diagonal = ~torch.eye(a.shape[-1], dtype=torch.bool)
    a, b = a[..., off_diagonal], b[..., off_diagonal]  # (n, L, P * (P - 1))
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    correlation = (a * b).sum(-1) / ((a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12))
    return correlation.mean(dim=0).numpy()


def islands_figure(images: np.ndarray, colours: dict[str, np.ndarray], panel: float = 1.6) -> plt.Figure:
    """Rows: images. Columns: the image, then each source's levels 0..L-1 ({source name: level_colours(...)})."""
    n_levels = next(iter(colours.values())).shape[1]
    panels = [(source, level) for source in colours for level in range(n_levels)]
    n_columns = 1 + len(panels)
    fig, axes = plt.subplots(len(images), n_columns, figsize=(panel * n_columns, panel * len(images)), squeeze=False)
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        for column, (source, level) in enumerate(panels, start=1):
            axes[row, column].imshow(colours[source][row, level], interpolation="nearest")
    axes[0, 0].set_title("image", fontsize=8)
    for column, (source, level) in enumerate(panels, start=1):
        axes[0, column].set_title(f"{source}\n{level_name(level, n_levels)}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Island metric: do a level's islands fall on the reference's segments of that level?
#
# Per image and level, the columns' vectors are clustered into as many groups as the reference has at that
# level, and the clusters are compared with the reference partition of the patch centres by the adjusted Rand
# index (ARI): 1 for the same partition (whatever the group names), about 0 for a partition unrelated to it.
# The reference partition comes from the teacher's masks: two points are in one group at a level when each lies
# in the other's mask there, and groups are the connected components of that relation. For the ground-truth
# teacher of the generated scenes this is exactly the true subpart / part / whole partition; on real data it is
# SAM's. Level l of a model is compared with the reference's level l.
#
# The clustering is average-linkage agglomerative on cosine distance, stopped at the reference's number of
# groups. It has no initialisation and no iterations, so it is deterministic, and it merges nearly identical
# vectors first, which is what an island is; giving it the reference's number of groups scores every model on
# the same footing, whatever scale its vectors have (a trained model, a random one, the teacher's targets).


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index of two labelings of the same items (scikit-learn's): 1.0 for identical partitions (labels
    may be named differently), about 0 for independent ones; two partitions that are both one group, or both all
    singletons, score 1.0."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labelings of {a.size} and {b.size} items")
    return float(adjusted_rand_score(a, b))


def cluster_columns(vectors: np.ndarray, k: int) -> np.ndarray:
    """Labels (P,) of (P, D) vectors in k groups: average-linkage agglomerative clustering (scikit-learn's) on cosine
    distance, a zero vector at distance 1 from every other. Deterministic; k is capped to the number of vectors."""
    x = np.asarray(vectors, dtype=np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = max(1, min(k, len(unit)))
    if k == len(unit):
        return np.arange(len(unit))
    distance = np.clip(1.0 - unit @ unit.T, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    clustering = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit(distance)
    return np.unique(clustering.labels_, return_inverse=True)[1]


def connected_components(adjacency: np.ndarray) -> np.ndarray:
    """Component labels (P,) of a symmetric (P, P) bool adjacency (SciPy's), numbered 0.. in order of first
    appearance."""
    _, labels = csgraph.connected_components(sparse.csr_matrix(np.asarray(adjacency, dtype=bool)), directed=False)
    return labels


def mask_partition(masks, points: np.ndarray) -> np.ndarray:
    """Reference partition (L, P) of the patch centres from a teacher's masks (P, L, H, W) bool: points i and j
    are in one group at a level when each lies in the other's mask there (then connected components).
    points: the prompt pixels (x, y) of teacher.point_grid, (P, 2)."""
    masks = np.asarray(masks, dtype=bool)
    cols, rows = np.asarray(points).astype(np.int64).T
    inside = masks[:, :, rows, cols]  # (P, L, P): point j lies in point i's mask
    return np.stack([connected_components(m & m.T) for m in inside.transpose(1, 0, 2)])


def island_matrix(levels: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Mean adjusted Rand index over images between each model level's column clusters (rows) and each reference
    level (columns), (model levels, reference levels): a level clustered into as many groups as the reference level
    has. The diagonal says whether each level draws its own level's islands; off it, whether it draws another's (a
    top level that draws parts rather than wholes, say). levels (n_images, P, L, D); references (n_images, L', P)."""
    levels, references = np.asarray(levels), np.asarray(references)
    scores = np.array([
        [[adjusted_rand_index(cluster_columns(x[:, level], len(np.unique(r))), r) for r in ref] for level in
         range(x.shape[1])]
        for x, ref in zip(levels, references)
    ])
    return scores.mean(axis=0)


def island_scores(levels: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Mean adjusted Rand index per level over images between each level's clusters and the same reference level
    (the diagonal of island_matrix). levels (n_images, P, L, D); references (n_images, L, P) labels (mask_partition)."""
    if np.shape(levels)[2] != np.shape(references)[1]:
        raise ValueError(f"{np.shape(levels)[2]} model levels against {np.shape(references)[1]} reference levels")
    return np.diag(island_matrix(levels, references)).copy()


def islands_table(records: list[dict]) -> str:
    """The island metric of notebook 06's `islands` metrics files (one per seed) as a table: one row per model,
    the adjusted Rand index per level, as mean ± standard deviation over the seeds when there are several."""
    first = records[0]
    n_levels = len(next(iter(first["islands"].values()))["ari"])
    header = ["Model", *(level_name(l, n_levels) for l in range(n_levels)), "Source"]
    rows = []
    for name in first["islands"]:
        scores = np.array([record["islands"][name]["ari"] for record in records])  # (seeds, levels)
        cells = [f"{m:.3f}" if len(scores) == 1 else f"{m:.3f} ± {s:.3f} (n={len(scores)})"
                 for m, s in zip(scores.mean(axis=0), scores.std(axis=0, ddof=min(1, len(scores) - 1)))]
        rows.append([name, *cells, source_of(*records)])
    return (f"**Islands: adjusted Rand index of each level's column clusters against the {first['reference']}, "
            f"{first['images']} {first['split']} images**\n\n" + markdown_table(header, rows))
