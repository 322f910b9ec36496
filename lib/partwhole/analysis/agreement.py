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


# How close one target computed on the straightforward path in float32 must be to the stored one, by the precision
# the targets were built in. Stored targets are float16 (about 1e-3 at their magnitudes) and the fast path resizes
# with PIL's fixed-point weights (a grey level here and there): every entry within 0.01. Under bfloat16 autocast
# the fast path keeps 8 significant bits per operation, so entries move by a few hundredths (0.04 on an H200 with
# MaxViT-pico's random weights): there the two vectors must point the same way instead.
FLOAT32_ATOL = 0.01
BFLOAT16_MIN_COSINE = 0.999
TARGET_AGREEMENT = {"float32": f"every entry within {FLOAT32_ATOL}",
                    "bfloat16": f"cosine at least {BFLOAT16_MIN_COSINE}"}


def check_stored_target(computed: torch.Tensor, stored: torch.Tensor, precision: str) -> float:
    """Raises AssertionError unless `computed` (D,) agrees with `stored` (D,) as TARGET_AGREEMENT[precision] says;
    returns their largest entry difference."""
    computed, stored = computed.float().cpu(), stored.float().cpu()
    if precision == "float32":
        torch.testing.assert_close(computed, stored, rtol=0, atol=FLOAT32_ATOL)
    else:
        cosine = torch.nn.functional.cosine_similarity(computed, stored, dim=0).item()
        if not cosine >= BFLOAT16_MIN_COSINE:  # NaN fails too
            raise AssertionError(f"cosine {cosine:.4f} between the computed and the stored target, below "
                                 f"{BFLOAT16_MIN_COSINE} ({precision} targets)")
    return (computed - stored).abs().max().item()


def agreement(teacher, embedder: MaskEmbedder, pixels: np.ndarray, paths, crops) -> dict:
    """Fast path against reference on images (B, H, W, 3) uint8: see `compare`."""
    pixels = np.array(pixels)
    reference = [teacher(image, path) for image, path in zip(pixels, paths)]
    fast = teacher_masks(teacher, pixels, paths).cpu()
    fast_targets = embed_masks(torch.from_numpy(pixels), distinct_masks(fast), embedder, crops)
    expected = [reference_targets(image, masks, embedder, crops) for image, masks in zip(pixels, reference)]
    return compare(fast, fast_targets, torch.stack(reference),
                   {crop: torch.stack([e[crop] for e in expected]) for crop in crops})
