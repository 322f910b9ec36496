"""Teachers: what gives the three masks (subpart, part, whole) at every patch centre.

A teacher is a callable of one RGB uint8 image (H, W, 3) and its path, returning (P, 3, H, W) bool masks in level
order (prompts.py). Two teachers: `SamTeacher` (sam.py), the paper's, and `GroundTruthTeacher`, which reads the
true hierarchy of the generated part-whole scenes (synthetic.py): the same interface, a perfect teacher. A
SamTeacher also has a fast path for batches of images (`teacher_masks` uses it).
"""
from pathlib import Path

import numpy as np
import torch

from ..datasets.synthetic import load_hierarchy
from .prompts import LEVELS, pixel_indices
from .sam import SamTeacher


class GroundTruthTeacher:
    """Masks straight from the ground-truth hierarchy saved beside each generated scene.

    ``partwhole.datasets.synthetic.load_hierarchy(path)`` gives uint8 label maps ``(3, H, W)``: level 0
    subpart ids, level 1 part ids, level 2 whole ids. The mask of point ``p`` at level ``l`` is the
    region carrying the same label as the point's pixel. Background (one label) is a region like any
    other, so a point on background gets the background at every level. The hierarchy is nested by
    construction, so the levels are already ordered by area and are not reordered.
    """

    def __init__(self, image_size: int, grid: int):
        self.image_size = image_size
        self.grid = grid
        self.rows, self.cols = pixel_indices(image_size, grid)

    def __call__(self, image: np.ndarray, path: Path) -> torch.Tensor:
        labels = torch.as_tensor(np.asarray(load_hierarchy(Path(path))))
        expected = (LEVELS, self.image_size, self.image_size)
        if tuple(labels.shape) != expected:
            raise ValueError(f"hierarchy for {path} has shape {tuple(labels.shape)}, expected {expected}")
        if image is not None and tuple(image.shape[:2]) != expected[1:]:
            raise ValueError(f"image {path} has shape {tuple(image.shape)}, expected {expected[1:]} + channels")
        at_points = labels[:, self.rows, self.cols].T  # (P, 3): each point's label at each level
        return labels[None] == at_points[:, :, None, None]


def teacher_masks(teacher, pixels: np.ndarray, paths) -> torch.Tensor:
    """(B, P, L, H, W) bool masks of images (B, H, W, 3): a SamTeacher's fast path takes the batch in one call,
    any other teacher (a callable of one image and its path) is called image by image."""
    if isinstance(teacher, SamTeacher):
        return teacher.masks(torch.from_numpy(pixels), paths)
    return torch.stack([teacher(image, path) for image, path in zip(pixels, paths)])


def make_teacher(profile, device: str):
    if profile.teacher == "ground_truth":
        return GroundTruthTeacher(profile.image_size, profile.grid)
    if profile.teacher == "sam":
        return SamTeacher.from_profile(profile, device)
    raise ValueError(f"unknown teacher {profile.teacher!r}: use 'ground_truth' or 'sam'")
