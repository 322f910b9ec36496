"""How far the fast teacher path is from the straightforward one, on the same images.

The straightforward path is the reference: masks from `SamPredictor` one image at a time in float32 (a
teacher's `__call__`), each masked image made with PIL (`masked_image`) and embedded through timm's own PIL
transform in float32 (`MaskEmbedder.__call__`). The fast path is what targets are built with: `teacher_masks`
(batched, low-resolution logits straight to the image size, the profile's precision) and `embed_masks` (masking,
cropping, resizing and normalisation as tensors, the profile's precision and memory format).
"""
import numpy as np
import torch

from ..method.embedder import MaskEmbedder, distinct_masks, embed_masks, masked_image
from ..method.teachers import teacher_masks


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corresponding masks (..., H, W) bool; two empty masks agree (IoU 1)."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def reference_targets(image: np.ndarray, masks: torch.Tensor, embedder: MaskEmbedder, crops) -> dict:
    """{crop: (P, L, D)} of one image's masks (P, L, H, W), through PIL and timm's PIL transform."""
    distinct = distinct_masks(masks[None].cpu())
    return {crop: embedder([masked_image(image, m, crop) for m in distinct.masks.numpy()])[distinct.where[0]]
            for crop in crops}


def compare(fast_masks: torch.Tensor, fast_targets: dict, masks: torch.Tensor, targets: dict) -> dict:
    """The masks' mean IoU and the targets' cosine similarity (mean and minimum over images, points, levels and
    crop modes) of the fast path's masks (N, P, L, H, W) and {crop: targets (N, P, L, D)} against the reference's."""
    cosines = torch.cat([torch.nn.functional.cosine_similarity(fast_targets[crop].float(), expected.float(), dim=-1)
                         .flatten() for crop, expected in targets.items()])
    return {"mask_iou": mask_iou(fast_masks.cpu(), masks.cpu()).mean().item(),
            "cosine_mean": cosines.mean().item(), "cosine_min": cosines.min().item()}


def agreement(teacher, embedder: MaskEmbedder, pixels: np.ndarray, paths, crops) -> dict:
    """Fast path against reference on images (B, H, W, 3) uint8: see `compare`."""
    pixels = np.array(pixels)
    reference = [teacher(image, path) for image, path in zip(pixels, paths)]
    fast = teacher_masks(teacher, pixels, paths).cpu()
    fast_targets = embed_masks(torch.from_numpy(pixels), distinct_masks(fast), embedder, crops)
    expected = [reference_targets(image, masks, embedder, crops) for image, masks in zip(pixels, reference)]
    return compare(fast, fast_targets, torch.stack(reference),
                   {crop: torch.stack([e[crop] for e in expected]) for crop in crops})
