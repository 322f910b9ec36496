"""Teacher masks: three nested masks (subpart, part, whole) at the centre of every patch.

The image is divided into a ``grid x grid`` lattice of patches (paper Sec. 3.1: 14 x 14 patches of
16 px on a 224 px image). At the centre of each patch we ask a teacher for three binary masks, the
image-sized regions that the point belongs to at three levels of the part-whole hierarchy:

* level 0 - subpart (smallest),
* level 1 - part,
* level 2 - whole object (largest).

Points are enumerated row-major (point ``i = row * grid + col``), the same order as the student's
patch tokens. Every teacher returns a ``(grid*grid, 3, H, W)`` bool tensor.

Two teachers:

* :class:`SamTeacher` prompts Segment Anything with one positive point per patch centre and keeps
  its three ``multimask_output`` masks.
* :class:`GroundTruthTeacher` reads the true hierarchy of the generated part-whole scenes.

Level order is a documented choice. SAM's three multimask outputs are *not* guaranteed to be
ordered by size (they come from three learned output tokens, and which one fires on the small or
large interpretation varies from point to point). The authors' code used SAM's raw output order as
levels 0, 1, 2. Here the default, ``order="area"``, sorts the three masks of each point by pixel
count so level 0 is always the smallest and level 2 the largest; ``order="sam"`` reproduces the
reference behaviour.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from .batching import HalvingBatches
from .synthetic import load_hierarchy

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


def _check_order(order: str) -> None:
    if order not in LEVEL_ORDERS:
        raise ValueError(f"level order must be one of {LEVEL_ORDERS}, got {order!r}")


def order_levels(masks: torch.Tensor, order: str = "area") -> torch.Tensor:
    """Put each point's three masks in level order.

    ``masks``: ``(..., P, 3, H, W)`` bool. ``"area"`` sorts the masks of every point by pixel count,
    ascending and stable (ties keep SAM's order), so level 0 is the smallest. ``"sam"`` returns the
    masks as given, SAM's raw output order, which is what the authors' code used.
    """
    _check_order(order)
    if masks.ndim < 4 or masks.shape[-3] != LEVELS:
        raise ValueError(f"masks must have shape (..., P, {LEVELS}, H, W), got {tuple(masks.shape)}")
    if order == "sam":
        return masks
    area = masks.flatten(-2).sum(dim=-1)  # (..., P, 3) pixel counts
    idx = torch.argsort(area, dim=-1, stable=True)
    return torch.take_along_dim(masks, idx[..., None, None], dim=-3)


def _pixel_indices(image_size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel (row, col) of each patch centre, the pixel a point prompt sits on."""
    pts = point_grid(image_size, grid)
    return pts[:, 1].astype(np.int64), pts[:, 0].astype(np.int64)


class GroundTruthTeacher:
    """Masks straight from the ground-truth hierarchy saved beside each generated scene.

    ``partwhole.synthetic.load_hierarchy(path)`` gives uint8 label maps ``(3, H, W)``: level 0
    subpart ids, level 1 part ids, level 2 whole ids. The mask of point ``p`` at level ``l`` is the
    region carrying the same label as the point's pixel. Background (one label) is a region like any
    other, so a point on background gets the background at every level. The hierarchy is nested by
    construction, so the levels are already ordered by area and are not reordered.
    """

    def __init__(self, image_size: int, grid: int):
        self.image_size = image_size
        self.grid = grid
        self.rows, self.cols = _pixel_indices(image_size, grid)

    def __call__(self, image: np.ndarray, path: Path) -> torch.Tensor:
        labels = torch.as_tensor(np.asarray(load_hierarchy(Path(path))))
        expected = (LEVELS, self.image_size, self.image_size)
        if tuple(labels.shape) != expected:
            raise ValueError(f"hierarchy for {path} has shape {tuple(labels.shape)}, expected {expected}")
        if image is not None and tuple(image.shape[:2]) != expected[1:]:
            raise ValueError(f"image {path} has shape {tuple(image.shape)}, expected {expected[1:]} + channels")
        at_points = labels[:, self.rows, self.cols].T  # (P, 3): each point's label at each level
        return labels[None] == at_points[:, :, None, None]


# --------------------------------------------------------------------------------------------------
# SAM checkpoints


@dataclass(frozen=True)
class SamCheckpoint:
    filename: str
    approx_size: str  # for dry runs and error messages; not checked

    @property
    def url(self) -> str:
        return f"https://dl.fbaipublicfiles.com/segment_anything/{self.filename}"

    @property
    def sha256_prefix(self) -> str:
        # torch.hub convention: the 6 hex digits after the last "_" start the file's SHA-256.
        return self.filename.rsplit("_", 1)[1].split(".", 1)[0]


SAM_CHECKPOINTS: dict[str, SamCheckpoint] = {
    "vit_h": SamCheckpoint("sam_vit_h_4b8939.pth", "2.56 GB"),
    "vit_l": SamCheckpoint("sam_vit_l_0b3195.pth", "1.25 GB"),
    "vit_b": SamCheckpoint("sam_vit_b_01ec64.pth", "375 MB"),
}


def _checkpoint_spec(model_type: str) -> SamCheckpoint:
    if model_type not in SAM_CHECKPOINTS:
        raise ValueError(f"unknown SAM model_type {model_type!r}; valid: {sorted(SAM_CHECKPOINTS)}")
    return SAM_CHECKPOINTS[model_type]


def _sha256(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _fetch_instructions(spec: SamCheckpoint, directory: Path) -> str:
    return (
        f"expected file: {spec.filename} ({spec.approx_size}, SHA-256 starting {spec.sha256_prefix})\n"
        f"official URL:  {spec.url}\n"
        f"put it in:     {directory}\n"
        f"fetch it with: wget -P {directory} {spec.url}"
    )


def sam_checkpoint(model_type: str, directory: Path, download: bool = True) -> Path:
    """Path of a verified SAM checkpoint in ``directory``, downloading it if missing and allowed.

    A file is only returned if its SHA-256 starts with the prefix in its official name; a file with
    the wrong hash is refused, never used or overwritten.
    """
    spec = _checkpoint_spec(model_type)
    directory = Path(directory)
    path = directory / spec.filename
    if path.exists():
        actual = _sha256(path)[: len(spec.sha256_prefix)]
        if actual != spec.sha256_prefix:
            raise RuntimeError(
                f"SAM checkpoint {path} has SHA-256 starting {actual}, expected {spec.sha256_prefix}: "
                f"corrupt, truncated or a different file. Remove it and fetch the official one.\n"
                + _fetch_instructions(spec, directory)
            )
        return path
    if not download:
        raise FileNotFoundError(
            f"SAM checkpoint {path} not found (downloading disabled).\n" + _fetch_instructions(spec, directory)
        )

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{spec.filename}.{os.getpid()}.download"
    try:
        torch.hub.download_url_to_file(spec.url, str(tmp), hash_prefix=spec.sha256_prefix, progress=True)
        # Verify again before the final name exists, whatever did the download.
        actual = _sha256(tmp)[: len(spec.sha256_prefix)]
        if actual != spec.sha256_prefix:
            raise RuntimeError(f"downloaded file has SHA-256 starting {actual}, expected {spec.sha256_prefix}")
        tmp.replace(path)
    except Exception as exc:  # no network, HTTP error, bad hash, full disk: one clear message
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download SAM checkpoint {spec.filename} ({type(exc).__name__}: {exc}).\n"
            + _fetch_instructions(spec, directory)
        ) from exc
    return path


# --------------------------------------------------------------------------------------------------
# SAM teacher


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
      axis, applied as two matrix products. Its masks equal the reference's up to float rounding and
      the image resize (PIL in the predictor, torch here; tests: mean IoU >= 0.99).
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

        _check_order(level_order)
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
    def from_checkpoint(
        cls,
        model_type: str,
        checkpoint: Path | str,
        image_size: int,
        grid: int,
        level_order: str = "area",
        device: str | torch.device = "cpu",
        download: bool = True,
        points_per_batch: int = 64,
        precision: str = "float32",
        labels: str = "reference",
    ) -> "SamTeacher":
        """Build a released SAM from a verified checkpoint.

        ``checkpoint`` is either the directory that holds (or will hold) the official file, or the
        path of the file itself, which must keep its official name.
        """
        from segment_anything import sam_model_registry

        spec = _checkpoint_spec(model_type)
        checkpoint = Path(checkpoint)
        if checkpoint.suffix == ".pth":
            if checkpoint.name != spec.filename:
                raise ValueError(
                    f"checkpoint file for {model_type} must be named {spec.filename}, got {checkpoint.name}"
                )
            directory = checkpoint.parent
        else:
            directory = checkpoint
        path = sam_checkpoint(model_type, directory, download=download)
        # Build empty, then load ourselves: segment_anything's loader calls torch.load without
        # map_location, which breaks on machines without the device the weights were saved from.
        sam = sam_model_registry[model_type](checkpoint=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
        return cls(sam.to(device), image_size, grid, level_order=level_order, points_per_batch=points_per_batch,
                   precision=precision, labels=labels)

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


PRECISIONS = ("float32", "bfloat16")


def autocast(precision: str, device) -> torch.autocast:
    """A (re-enterable) bfloat16 autocast context on ``device`` for ``precision="bfloat16"``, disabled for float32.
    On a CPU it is slower than float32: it is there to test bfloat16's numerics."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bfloat16")


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
