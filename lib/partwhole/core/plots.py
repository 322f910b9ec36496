"""Figures of the notebooks. Masks and prompt points are drawn as in SAM's own example notebooks."""
import matplotlib.pyplot as plt
import numpy as np

LEVEL_NAMES = ("subpart (level 0)", "part (level 1)", "whole (level 2)")
MASK_COLOUR = np.array([30 / 255, 144 / 255, 255 / 255, 0.6])  # SAM notebooks' translucent blue


def show_mask(mask: np.ndarray, ax, colour=MASK_COLOUR):
    h, w = mask.shape
    ax.imshow(mask.reshape(h, w, 1) * colour.reshape(1, 1, -1))


def show_points(coords: np.ndarray, ax, marker_size: int = 200, colour="green"):
    ax.scatter(coords[:, 0], coords[:, 1], color=colour, marker="*", s=marker_size, edgecolor="white", linewidth=1.25)


def show_point_grid(image: np.ndarray, points: np.ndarray, ax=None):
    """The image with every prompt point (one per patch centre)."""
    ax = ax or plt.gca()
    ax.imshow(image)
    show_points(points, ax, marker_size=40)
    ax.set_title(f"{len(points)} prompt points")
    ax.axis("off")


def show_levels_at_points(image: np.ndarray, masks: np.ndarray, points: np.ndarray, chosen: list[int]) -> plt.Figure:
    """One row per chosen point: the three masks the teacher gives there, subpart to whole."""
    fig, axes = plt.subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
    for row, p in zip(axes, chosen):
        for level, ax in enumerate(row):
            ax.imshow(image)
            show_mask(masks[p, level], ax)
            show_points(points[p : p + 1], ax)
            ax.set_title(f"point {p}: {LEVEL_NAMES[level]}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    return fig


def show_masked_images(examples: dict[str, list], titles: list[str]) -> plt.Figure:
    """One row per mask strategy ({strategy: [PIL images]}), one column per level."""
    fig, axes = plt.subplots(len(examples), len(titles), figsize=(3 * len(titles), 3 * len(examples)), squeeze=False)
    for row, (strategy, images) in zip(axes, examples.items()):
        for ax, image, title in zip(row, images, titles):
            ax.imshow(image)
            ax.set_title(f"{strategy}: {title}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    return fig


def plot_history(histories: dict[str, list], ylabel: str, ax=None):
    """Curves per epoch, e.g. {"train loss": [...], "valid loss": [...]}."""
    ax = ax or plt.gca()
    for name, values in histories.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def data_flow(teacher: list[tuple[str, tuple]], student: list[tuple[str, tuple]], loss: str) -> plt.Figure:
    """Two columns of tensors, each a box with its name and shape, top to bottom: the teacher's (images to
    targets) and the student's (images to class scores); `loss` joins the last teacher box to the student's
    box at the same height."""
    rows = max(len(teacher), len(student))
    fig, ax = plt.subplots(figsize=(9, 0.9 * rows + 0.4))
    box = {"boxstyle": "round,pad=0.4", "facecolor": "#eef3fb", "edgecolor": "#3a5a8c"}
    for x, chain in ((0.22, teacher), (0.72, student)):
        for row, (name, shape) in enumerate(chain):
            ax.text(x, rows - row, f"{name}\n{' x '.join(map(str, shape))}", ha="center", va="center", fontsize=9,
                    bbox=box)
            if row:
                ax.annotate("", xy=(x, rows - row + 0.3), xytext=(x, rows - row + 0.7),
                            arrowprops={"arrowstyle": "->", "color": "#3a5a8c"})
    joined = rows - len(teacher) + 1
    ax.annotate("", xy=(0.55, joined), xytext=(0.39, joined),
                arrowprops={"arrowstyle": "<->", "linestyle": "--", "color": "#b04030"})
    ax.text(0.47, joined + 0.22, loss, ha="center", fontsize=8, color="#b04030")
    ax.set_xlim(0, 1)
    ax.set_ylim(0.4, rows + 0.6)
    ax.axis("off")
    return fig
