"""Segment Anything as the teacher: one point prompt at every patch centre, three masks per point.

`SamTeacher` holds a SAM model and the study's prompts (prompts.py) and gives the masks two ways: the
straightforward path through segment_anything's own `SamPredictor`, one image at a time, and the fast path that
targets are built with (several images per image-encoder call, SAM's post-processing folded into two small matrix
products). `build_sam` makes the model of a profile: a registry architecture with the released checkpoint
(downloads.py fetches and verifies it), the same architecture with random weights (`random_weights`: rehearsals
and speed checks, which cost what trained weights cost), or `sam_model="tiny"`, a SAM of segment_anything's own
classes a few layers deep, for runs on a CPU.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from ..core.artefacts import project_root
from ..core.devices import HalvingBatches, autocast
from ..core.downloads import sam_checkpoint
from .prompts import check_level_order, order_levels, point_grid, point_labels
from .speedups import set_sam_attention

SAM_MODELS = ("vit_h", "vit_l", "vit_b", "tiny")  # segment_anything's registry, and the tiny one of build_tiny_sam


class SamTeacher:
    """SAM prompted with one point at each patch centre (labelled as ``point_labels`` says), three masks per point.

    Two paths to the same masks:

    * ``teacher(image)``, the reference: segment_anything's own ``SamPredictor``, one image at a time,
      float32. Memory on the decoder side grows with the batch: ``postprocess_masks`` upsamples every
      logit map to ``img_size x img_size`` float32 before resizing to the image, i.e.
      3 * 1024^2 * 4 B = 12 MiB per point (768 MiB at 64 points) for the real models.
    * ``teacher.masks(images)``, the fast path that targets are built with: several images per image
      encoder call, bfloat16 autocast if ``precision="bfloat16"``, ``points_per_batch`` points
      per decoder call, and the low-resolution logits (256 x 256 for the released models) taken
      straight to the image size: SAM's post-processing (bilinear up to 1024, crop the unpadded part,
      bilinear down to the image) is linear and separable, so it is folded into one small matrix per
      axis, applied as two matrix products. The image is resized by SAM's own transform, as in the
      predictor, so its masks equal the reference's up to float rounding (tests: mean IoU >= 0.999).
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        image_size: int,
        grid: int,
        level_order: str = "area",
        points_per_batch: int = 64,
        precision: str = "float32",
        labels: str = "reference",
    ):
        from segment_anything import SamPredictor

        check_level_order(level_order)
        self.sam = sam.eval()
        self.predictor = SamPredictor(self.sam)
        self.image_size = image_size
        self.grid = grid
        self.level_order = level_order
        self.batches = HalvingBatches(points_per_batch, "the SAM mask decoder (points per batch)")
        self.points = point_grid(image_size, grid)
        self.autocast = autocast(precision, self.device)
        self.coords = self.predictor.transform.apply_coords_torch(torch.from_numpy(self.points)[:, None, :],
                                                                 (image_size, image_size)).to(self.device)
        self.labels = point_labels(len(self.points), labels).to(self.device)
        self.resize_logits = postprocess_matrix(self.sam, image_size).to(self.device)  # (H, low); H = W

    @classmethod
    def from_profile(cls, profile, device: str) -> "SamTeacher":
        """The profile's SAM, prompted as the profile says: the released checkpoint of `sam_model` (fetched and
        verified on first use), or random weights with `random_weights` (and for the tiny SAM, which has none); its
        encoder's attention as `sam_attention` says."""
        checkpoint = None
        if not (profile.random_weights or profile.sam_model == "tiny"):
            checkpoint = sam_checkpoint(profile.sam_model, project_root() / profile.sam_checkpoint_dir)
        sam = set_sam_attention(build_sam(profile.sam_model, device, checkpoint), profile.sam_attention)
        return cls(sam, profile.image_size, profile.grid,
                   level_order=profile.level_order, points_per_batch=profile.teacher_batch,
                   precision=profile.sam_precision, labels=profile.point_labels)

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def __call__(self, image: np.ndarray, path: Path | None = None) -> torch.Tensor:
        """Masks ``(P, 3, H, W)`` bool on the CPU for an RGB uint8 ``(H, W, 3)`` image. ``path`` is unused."""
        expected = (self.image_size, self.image_size, 3)
        if image.shape != expected or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape {expected}, got {image.dtype} {image.shape}")
        predictor = self.predictor
        device = predictor.device
        with torch.inference_mode():
            predictor.set_image(image)  # RGB, the format SAM models declare
            # predict_torch wants prompts already in the resized frame, shape (B, N, 2) with N points
            # per prompt: here N = 1, one prompt per patch centre, labelled as `point_labels` says.
            coords = torch.from_numpy(self.points)[:, None, :]
            coords = predictor.transform.apply_coords_torch(coords, image.shape[:2]).to(device)
            labels = self.labels

            def decode(start, stop):
                masks, _, _ = predictor.predict_torch(coords[start:stop], labels[start:stop], multimask_output=True)
                return masks.cpu()

            out = self.batches.map(decode, len(coords))
            predictor.reset_image()  # free the image embedding between images
        return order_levels(torch.cat(out), self.level_order)

    def masks(self, images: torch.Tensor, paths=None) -> torch.Tensor:
        """Masks ``(B, P, 3, H, W)`` bool, on SAM's device, for RGB uint8 images ``(B, H, W, 3)``: the fast path.
        ``paths`` is unused."""
        return self.decode(self.encode(images))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """SAM's image embeddings of a batch (B, H, W, 3) uint8: each image resized by SAM's own transform (the
        predictor's ``ResizeLongestSide.apply_image``, PIL on the CPU: a few ms per image, and the masks then differ
        from the predictor's by float rounding alone), normalised and padded by ``sam.preprocess``, then the image
        encoder, B images per call."""
        B, H, W, C = images.shape
        if (H, W, C) != (self.image_size, self.image_size, 3) or images.dtype != torch.uint8:
            raise ValueError(f"expected RGB uint8 images (B, {self.image_size}, {self.image_size}, 3), "
                             f"got {images.dtype} {tuple(images.shape)}")
        resized = np.stack([self.predictor.transform.apply_image(image) for image in images.cpu().numpy()])
        x = torch.from_numpy(resized).to(self.device).permute(0, 3, 1, 2).float()
        with self.autocast:
            return self.sam.image_encoder(self.sam.preprocess(x))

    @torch.inference_mode()
    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Masks (B, P, 3, H, W) in level order from image embeddings (B, C, h, w)."""
        return order_levels(torch.stack([self._decode_image(e) for e in embeddings]), self.level_order)

    def _decode_image(self, embedding: torch.Tensor) -> torch.Tensor:
        """(P, 3, H, W) masks of one image from its embedding (C, h, w), in SAM's raw order."""
        sam, coords, labels, resize = self.sam, self.coords, self.labels, self.resize_logits

        def decode(start, stop):
            with self.autocast:
                sparse, dense = sam.prompt_encoder(points=(coords[start:stop], labels[start:stop]), boxes=None, masks=None)
                logits, _ = sam.mask_decoder(image_embeddings=embedding[None], image_pe=sam.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=True)
            return resize @ logits.float() @ resize.T > sam.mask_threshold

        return torch.cat(self.batches.map(decode, len(coords)))


def postprocess_matrix(sam: torch.nn.Module, image_size: int) -> torch.Tensor:
    """SAM's ``postprocess_masks`` along one axis of a square image, as an ``(image_size, low)`` matrix.

    Bilinear resizing (without antialias) is separable and linear, so resizing the low-resolution
    logits to SAM's input frame, cropping the image's part and resizing to the image is
    ``M @ logits @ M.T``; M is found by sending the identity through the same three steps.
    """
    low = sam.prompt_encoder.mask_input_size[0]
    frame = sam.image_encoder.img_size
    valid = ResizeLongestSide.get_preprocess_shape(image_size, image_size, frame)[0]
    basis = torch.eye(low)[None]  # (1, low, low): channel i is the unit logit map at position i
    x = F.interpolate(basis, frame, mode="linear", align_corners=False)[..., :valid]
    x = F.interpolate(x, image_size, mode="linear", align_corners=False)
    return x[0].T



def build_sam(model_type: str, device, checkpoint: Path | None = None, seed: int = 0) -> torch.nn.Module:
    """A SAM in eval mode on `device`: segment_anything's registry architecture `model_type` with the weights of a
    verified `checkpoint`, or random weights drawn from `seed` without one (built on the device: ViT-H's 632 M
    parameters are initialised there in a moment, on a CPU in a minute); "tiny" has random weights only."""
    from segment_anything import sam_model_registry

    if model_type not in SAM_MODELS:
        raise ValueError(f"unknown SAM model {model_type!r}; choose one of {SAM_MODELS}")
    if model_type == "tiny":
        if checkpoint is not None:
            raise ValueError("the tiny SAM has no released weights")
        return build_tiny_sam(seed, input_size=256).to(device)
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.device(device):
        torch.manual_seed(seed)
        sam = sam_model_registry[model_type]()  # no checkpoint: segment_anything's loader ignores map_location
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    return sam.to(device).eval()  # SAM's pixel statistics are made on the CPU whatever the default device


def build_tiny_sam(seed: int = 0, input_size: int = 1024) -> torch.nn.Module:
    """A randomly initialised, tiny SAM from segment_anything's own classes, for tests and dry runs.

    Same structure as the released models and, by default, the same 1024 px input frame, so the
    predictor applies the same ``ResizeLongestSide(1024)`` and coordinate scaling. The image encoder is
    2 blocks, 32 wide, with ``input_size / 16`` px patches (a 16 x 16 embedding; block 0 windowed,
    block 1 global like SAM's pattern), and the prompt encoder / mask decoder are 32 wide.
    segment_anything's ``_build_sam`` fixes the decoder at 256 wide and the embedding at 64 x 64,
    which costs ~10 s per 64 points on a CPU, so the modules are assembled here, with the same
    arguments otherwise. The global RNG is left untouched.

    At 1024 most of the remaining time is SamPredictor's ``postprocess_masks``, which upsamples every
    mask to ``input_size``^2 before resizing it to the image; ``input_size=256`` makes that 16x cheaper.
    """
    if input_size % 16 != 0:
        raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    image_size, patch_size, dim = input_size, input_size // 16, 32
    embedding_size = image_size // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2,
                embed_dim=32,
                img_size=image_size,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2,
                patch_size=patch_size,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=(1,),
                window_size=4,
                out_chans=dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(embedding_size, embedding_size),
                input_image_size=(image_size, image_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2 * dim, num_heads=2),
                transformer_dim=dim,
                iou_head_depth=3,
                iou_head_hidden_dim=dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()
