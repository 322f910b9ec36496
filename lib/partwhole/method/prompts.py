"""The prompts: a point at the centre of every patch, its label, and the order of its three masks.

The image is divided into a ``grid x grid`` lattice of patches (paper Sec. 3.1: 14 x 14 patches of 16 px on a
224 px image). At the centre of each patch a teacher is asked for three binary masks, the image-sized regions the
point belongs to at three levels of the part-whole hierarchy: level 0 subpart (smallest), level 1 part, level 2
whole. Points are enumerated row-major (point ``i = row * grid + col``), the same order as the student's columns.
Every teacher returns a ``(grid*grid, 3, H, W)`` bool tensor.

Level order is a documented choice. SAM's three multimask outputs are *not* ordered by size (they come from
three learned output tokens, and which one fires on the small or the large reading varies from point to point).
The authors' code used SAM's raw output order as levels 0, 1, 2. Here the default, ``order="area"``, sorts the
three masks of each point by pixel count, so level 0 is always the smallest and level 2 the largest;
``order="sam"`` reproduces the authors'.
"""
import numpy as np
import torch

LEVELS = 3
LEVEL_ORDERS = ("area", "sam")
POINT_LABELS = ("reference", "positive")


def point_grid(image_size: int, grid: int) -> np.ndarray:
    """Pixel coordinates ``(x, y)`` of the patch centres, shape ``(grid*grid, 2)``, float32, row-major.

    Point ``i = row * grid + col`` is at ``x = (col + 0.5) * image_size / grid``,
    ``y = (row + 0.5) * image_size / grid`` (224 / 14 gives 8, 24, ..., 216).
    """
    if grid <= 0 or image_size <= 0:
        raise ValueError(f"image_size and grid must be positive, got image_size={image_size}, grid={grid}")
    if image_size % grid != 0:
        raise ValueError(
            f"image_size ({image_size}) must be divisible by grid ({grid}) so that every patch has the same size"
        )
    centres = (np.arange(grid, dtype=np.float32) + 0.5) * (image_size / grid)
    ys, xs = np.meshgrid(centres, centres, indexing="ij")  # ys varies along rows -> row-major
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def point_labels(n_points: int, mode: str = "reference") -> torch.Tensor:
    """SAM's label of each point prompt, ``(P, 1)`` int, one prompt of one point per patch centre.

    ``"positive"``: label 1 (foreground) for every point, what the paper describes. ``"reference"``: point ``i``
    gets label ``i``, what the authors' code passes to SAM (``point_labels = [[i] for i in range(196)]``). SAM's
    prompt encoder adds its negative-point embedding for label 0, its positive-point embedding for label 1 and no
    label embedding for any other value, so there point 0 is a negative prompt, point 1 a positive one and every
    other point carries only its position.
    """
    if mode not in POINT_LABELS:
        raise ValueError(f"point labels must be one of {POINT_LABELS}, got {mode!r}")
    if mode == "positive":
        return torch.ones(n_points, 1, dtype=torch.int)
    return torch.arange(n_points, dtype=torch.int)[:, None]


def check_level_order(order: str) -> None:
    if order not in LEVEL_ORDERS:
        raise ValueError(f"level order must be one of {LEVEL_ORDERS}, got {order!r}")


def order_levels(masks: torch.Tensor, order: str = "area") -> torch.Tensor:
    """Put each point's three masks in level order.

    ``masks``: ``(..., P, 3, H, W)`` bool. ``"area"`` sorts the masks of every point by pixel count,
    ascending and stable (ties keep SAM's order), so level 0 is the smallest. ``"sam"`` returns the
    masks as given, SAM's raw output order, which is what the authors' code used.
    """
    check_level_order(order)
    if masks.ndim < 4 or masks.shape[-3] != LEVELS:
        raise ValueError(f"masks must have shape (..., P, {LEVELS}, H, W), got {tuple(masks.shape)}")
    if order == "sam":
        return masks
    area = masks.flatten(-2).sum(dim=-1)  # (..., P, 3) pixel counts
    idx = torch.argsort(area, dim=-1, stable=True)
    return torch.take_along_dim(masks, idx[..., None, None], dim=-3)


def pixel_indices(image_size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel (row, col) of each patch centre, the pixel a point prompt sits on."""
    pts = point_grid(image_size, grid)
    return pts[:, 1].astype(np.int64), pts[:, 0].astype(np.int64)
