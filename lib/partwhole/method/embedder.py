"""The mask embedder: every masked image of the teacher becomes a vector, through a timm model and its own eval
transform.

Two paths to the embeddings: `MaskEmbedder.__call__` runs timm's own PIL transform on PIL images (the reference,
with `masked_image`), and `embed_masks` / `MaskEmbedder.embed`, which targets are built with, masks, crops,
resizes and normalises batches of masked images as tensors on the embedder's device (`MaskedImageTransform`,
which reproduces timm's transform: tests check that the two agree).

Mask strategies (paper Fig. 2, Table 1):
- "none": image * mask, full frame kept (background black), so the embedding keeps the part's position.
- "bbox": image * mask cropped to the mask's bounding box. An empty mask is embedded as it is (all black).
Both strategies come out of the same teacher pass. Identical masks of one image (common: every point on a part
gets that part's mask) are embedded once (`distinct_masks`).
"""
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.artefacts import DamagedFile, load_torch, read_json, sha256
from ..core.devices import HalvingBatches, autocast
from ..core.downloads import create_timm_model

CROP_MODES = ("none", "bbox")
WEIGHTS_DIR = Path(__file__).parents[1] / "weights"  # weights shipped with the package (the embedded profile's)
REMAKE_WEIGHTS = "Make the file again: python -m partwhole.study.embedder_training (or check out the shipped one)."


def weights_path(name: str) -> Path:
    """A profile's embedder_weights: a file name in the package's weights folder, or a path."""
    path = Path(name)
    return path if path.parent != Path(".") else WEIGHTS_DIR / name


def weights_digest(name: str | None) -> str | None:
    """A weights file's name and SHA-256 (what the targets' manifest records), or None."""
    if name is None:
        return None
    path = weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"embedder weights {path} not found. {REMAKE_WEIGHTS}")
    return f"{name} (sha256 {sha256(path)[:12]})"


def check_report(path: Path):
    """Weights are used only with their training report beside them (JSON of the same name), whose digest they match:
    the report is written once the weights are complete, so a file replaced since (or half-trained) is refused."""
    report = Path(path).with_suffix(".json")
    if not report.is_file():
        raise DamagedFile(f"embedder weights {path} have no training report ({report.name}) vouching for them. "
                          f"{REMAKE_WEIGHTS}")
    vouched = read_json(report, "embedder training report", REMAKE_WEIGHTS).get("weights_sha256")
    if vouched != sha256(path)[: len(vouched or "x")]:
        raise DamagedFile(f"embedder weights {path} are not those their report {report.name} vouches for (sha256 "
                          f"{sha256(path)[:12]}, the report says {vouched}). {REMAKE_WEIGHTS}")


def load_weights(model: torch.nn.Module, path: Path):
    """A local weights file (a classifier's state dict) into a timm model built with num_classes=0: the classifier's
    own weights are left out, as timm's pretrained loader does; a file that does not fit the model, or that its
    training report does not vouch for, is refused."""
    state = load_torch(path, "embedder weights", REMAKE_WEIGHTS, weights_only=True)
    check_report(path)
    head = model.pretrained_cfg.get("classifier", "head") + "."
    try:
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)})
    except RuntimeError as error:  # missing, unexpected or misshapen tensors
        problem = " ".join(str(error).split())[:300]
        raise DamagedFile(f"embedder weights {path} do not fit the profile's embedder ({problem}). "
                          f"{REMAKE_WEIGHTS}") from error


class MaskEmbedder:
    """A timm model by name (pooled features, num_classes=0) with its own eval transform.

    `precision="bfloat16"` runs the fast path under bfloat16 autocast and `channels_last` feeds it channels-last
    batches (faster for convolutional models on a GPU); the reference path `__call__` is always float32.
    """

    def __init__(self, name: str, pretrained: bool, model_kwargs: dict, data_config: dict, device: str,
                 batch_size: int = 64, precision: str = "float32", channels_last: bool = False,
                 checkpoint: Path | None = None, seed: int = 0):
        with torch.random.fork_rng(devices=[]):  # weights not loaded are drawn from `seed`, the same in every run
            torch.manual_seed(seed)
            model = create_timm_model(name, pretrained and checkpoint is None, num_classes=0, **model_kwargs)
        if checkpoint is not None:
            load_weights(model, checkpoint)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device, memory_format=self.memory_format)
        self.device = device
        self.checkpoint = checkpoint
        self.data_config = timm.data.resolve_model_data_config(self.model, args=dict(data_config))
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)
        self.masked_transform = MaskedImageTransform(self.data_config)
        self.autocast = autocast(precision, device)
        self.dim = self.model.num_features
        self.batches = HalvingBatches(batch_size, f"the mask embedder {name}")

    @classmethod
    def from_profile(cls, profile, device: str) -> "MaskEmbedder":
        """The profile's embedder: its weights file (`embedder_weights`), hub weights (`embedder_pretrained`, unless
        `random_weights`), or random weights drawn from `embedder_seed`; at `embedder_image_size` if set."""
        checkpoint = weights_path(profile.embedder_weights) if profile.embedder_weights else None
        kwargs, data_config = dict(profile.embedder_kwargs), dict(profile.embedder_data_config)
        if profile.embedder_image_size:  # timm builds the model for that input, and its transform follows
            size = profile.embedder_image_size
            kwargs["img_size"], data_config["input_size"] = size, (3, size, size)
        return cls(profile.embedder, profile.embedder_pretrained and not profile.random_weights, kwargs, data_config,
                   device, profile.embedder_batch or profile.teacher_batch, profile.precision, profile.channels_last,
                   checkpoint,
                   profile.embedder_seed)

    def received(self, image: Image.Image) -> np.ndarray:
        """What the model receives for an image after timm's transform (resized, cropped, normalised), turned back
        into displayable pixels (H, W, 3) in [0, 1]."""
        mean, std = (torch.tensor(self.data_config[key]).view(3, 1, 1) for key in ("mean", "std"))
        return (self.transform(image) * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """(len(images), dim) float32 features on the CPU, through timm's PIL transform: the reference path."""

        def embed(start, stop):
            batch = torch.stack([self.transform(im) for im in images[start:stop]])
            return self.model(batch.to(self.device, memory_format=self.memory_format)).float().cpu()

        return torch.cat(self.batches.map(embed, len(images)))

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor, crop: str) -> torch.Tensor:
        """(M, dim) float32 features on the CPU of images[owner[i]] (uint8, (B, H, W, 3)) masked by masks[i]
        ((M, H, W) bool), cropped to the mask for crop="bbox": the fast path, in batches on the embedder's device."""

        def embed(start, stop):
            batch = self.masked_transform(images[owner[start:stop]], masks[start:stop], crop)
            with self.autocast:
                return self.model(batch.contiguous(memory_format=self.memory_format)).float().cpu()

        return torch.cat(self.batches.map(embed, len(masks)))


class MaskedImageTransform:
    """timm's eval transform ("center" crop mode) of masked images, in batches of tensors on any device.

    The specification is timm's PIL transform of `masked_image(image, mask, crop)`: shorter side resized to
    floor(size / crop_pct) (torchvision's Resize: bicubic or bilinear, antialiased), centre crop, /255, normalise.
    The resize runs in PIL's two passes (width, then height), each rounded and clipped to uint8 values as PIL's
    are; what remains are PIL's fixed-point weights.
    Bounding-box crops have many sizes: crops of one size are resized together.
    """

    def __init__(self, data_config: dict):
        _, height, width = data_config["input_size"]
        crop_mode, crop_pct = data_config.get("crop_mode") or "center", data_config["crop_pct"]
        if height != width or crop_mode != "center" or crop_pct > 1:
            raise ValueError(f"only square inputs, crop_mode 'center' and crop_pct <= 1 are implemented, got "
                             f"input_size {data_config['input_size']}, crop_mode {crop_mode!r}, crop_pct {crop_pct}")
        if data_config["interpolation"] not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation {data_config['interpolation']!r} is not implemented: bicubic or bilinear")
        self.size, self.scale_size, self.mode = width, math.floor(width / crop_pct), data_config["interpolation"]
        self.mean = torch.tensor(data_config["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(data_config["std"]).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, crop: str) -> torch.Tensor:
        """(M, 3, size, size) float32 model inputs from images (M, H, W, 3) uint8 and their masks (M, H, W) bool."""
        if crop not in CROP_MODES:
            raise ValueError(f"unknown crop mode {crop!r}; choose one of {CROP_MODES}")
        masked = images.permute(0, 3, 1, 2) * masks[:, None]
        if crop == "none":
            return self._resize_crop_normalise(masked)
        out = torch.empty(len(masks), 3, self.size, self.size, device=masks.device)
        boxes = bounding_boxes(masks).tolist()
        by_shape = {}
        for i, (top, bottom, left, right) in enumerate(boxes):
            by_shape.setdefault((bottom - top, right - left), []).append(i)
        for members in by_shape.values():
            crops = torch.stack([masked[i, :, boxes[i][0] : boxes[i][1], boxes[i][2] : boxes[i][3]] for i in members])
            out[members] = self._resize_crop_normalise(crops)
        return out

    def _resize_crop_normalise(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        long = math.floor(self.scale_size * max(h, w) / min(h, w))  # torchvision: the longer side follows, truncated
        size = (self.scale_size, long) if h <= w else (long, self.scale_size)
        x = x.float()
        for pass_size in ((h, size[1]), size):  # PIL resizes width, then height, to uint8 values after each
            if pass_size != tuple(x.shape[-2:]):
                x = F.interpolate(x, pass_size, mode=self.mode, align_corners=False, antialias=True)
                x = x.clamp_(0, 255).round_()
        top, left = round((size[0] - self.size) / 2), round((size[1] - self.size) / 2)
        x = x[..., top : top + self.size, left : left + self.size]
        return (x / 255 - self.mean.to(x.device)) / self.std.to(x.device)


def bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(M, 4) int64 (top, bottom, left, right), bottom/right exclusive, of masks (M, H, W); the whole frame
    for an empty mask (embedded as it is, all black)."""
    rows, cols = masks.any(dim=2).int(), masks.any(dim=1).int()
    first = lambda a: a.argmax(dim=1)  # noqa: E731  (0 when empty)
    end = lambda a: a.shape[1] - a.flip(1).argmax(dim=1)  # noqa: E731  (the length when empty)
    return torch.stack([first(rows), end(rows), first(cols), end(cols)], dim=1)


def masked_image(image: np.ndarray, mask: np.ndarray, crop: str) -> Image.Image:
    """The image with everything outside `mask` black; cropped to the mask's bounding box for crop="bbox"."""
    masked = image * mask[..., None]
    if crop == "bbox" and mask.any():
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        masked = masked[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    elif crop not in CROP_MODES:
        raise ValueError(f"unknown crop mode {crop!r}; choose one of {CROP_MODES}")
    return Image.fromarray(masked)


class DistinctMasks(NamedTuple):
    """The distinct masks of each image of a batch: masks (U, H, W) bool, owner (U,) the image of each, and
    where (B, P, L): which distinct mask every point and level of every image has."""

    masks: torch.Tensor
    owner: torch.Tensor
    where: torch.Tensor


def distinct_masks(masks: torch.Tensor) -> DistinctMasks:
    """Identical masks of one image (every point on a part gets that part's mask) kept once; masks (B, P, L, H, W).
    Rows are compared bit-packed (64 pixels per int64): torch.unique compares rows element by element."""
    B, P, L, H, W = masks.shape
    unique, where = [], []
    offset = 0
    for image_masks in masks:
        flat = image_masks.reshape(P * L, H * W)
        _, inverse = torch.unique(pack_rows(flat), dim=0, return_inverse=True)
        n = int(inverse.max()) + 1
        first = torch.full((n,), P * L, device=flat.device).scatter_reduce_(
            0, inverse, torch.arange(P * L, device=flat.device), "amin")  # a representative of each distinct mask
        unique.append(flat[first].reshape(n, H, W))
        where.append(inverse + offset)
        offset += n
    owner = torch.cat([torch.full((len(u),), b, device=masks.device) for b, u in enumerate(unique)])
    return DistinctMasks(torch.cat(unique), owner, torch.stack(where).reshape(B, P, L).cpu())


def pack_rows(rows: torch.Tensor) -> torch.Tensor:
    """(N, K) bool -> (N, ceil(K / 64)) int64; two rows are equal exactly when their packs are."""
    n, k = rows.shape
    padded = F.pad(rows.to(torch.uint8), (0, (-k) % 64))
    bits = padded.view(n, -1, 8) << torch.arange(8, dtype=torch.uint8, device=rows.device)
    return bits.sum(-1, dtype=torch.uint8).view(torch.int64)


def embed_masks(images: torch.Tensor, masks: DistinctMasks, embedder: MaskEmbedder, crops) -> dict:
    """{crop: (B, P, L, D) float32 on the CPU} for images (B, H, W, 3) uint8 and their distinct masks: each
    distinct mask is embedded once, and the masks of all B images share the embedder's batches."""
    images = images.to(embedder.device)
    unique, owner = masks.masks.to(embedder.device), masks.owner.to(embedder.device)
    return {crop: embedder.embed(images, unique, owner, crop)[masks.where] for crop in crops}
