"""Distillation targets: the embedding of every teacher mask, for every patch point and level.

For each image: the teacher gives masks (P points, 3 levels, H, W); each masked image is embedded by a timm
model through timm's eval transform for that model; the result is (P, 3, D). Masks are consumed as they
are made and never written to disk (the authors' pickled masks take 29.5 MB per image, 395 GB for Imagenette).

Two paths to the embeddings: `MaskEmbedder.__call__` runs timm's own PIL transform on PIL images (the
reference, with `masked_image`), and `embed_masks` / `MaskEmbedder.embed`, which targets are built with,
masks, crops, resizes and normalises batches of masked images as tensors on the embedder's device
(`MaskedImageTransform`, which reproduces timm's transform: tests check the two agree).

Mask strategies (paper Fig. 2, Table 1):
- "none": image * mask, full frame kept (background black), so the embedding keeps the part's position.
- "bbox": image * mask cropped to the mask's bounding box. An empty mask is embedded as it is (all black).
Both strategies come out of the same teacher pass. Identical masks of one image (common: every point on a
part gets that part's mask) are embedded once.

Targets are stored per split and strategy as float16 (images, P, 3, D) .npy with a JSON manifest; work is
written in chunks of images, so a killed run resumes at the last complete chunk. Under torchrun the chunks are
shared out between the ranks and rank 0 assembles them:

    torchrun --nproc_per_node 8 -m partwhole.targets --profile paper
"""
import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .data import ImageSet
from .embedder_training import training_recipe
from .paths import atomic_write, project_root
from .batching import HalvingBatches
from .profiles import Profile
from .teacher import GroundTruthTeacher, SamTeacher, autocast

CROP_MODES = ("none", "bbox")


class MaskEmbedder:
    """A timm model by name (pooled features, num_classes=0) with its own eval transform.

    `precision="bfloat16"` runs the fast path under bfloat16 autocast and `channels_last` feeds it channels-last
    batches (faster for convolutional models on a GPU); the reference path `__call__` is always float32.
    """

    def __init__(self, name: str, pretrained: bool, model_kwargs: dict, data_config: dict, device: str,
                 batch_size: int = 64, precision: str = "float32", channels_last: bool = False,
                 checkpoint: Path | None = None, seed: int = 0):
        if checkpoint is not None:  # local weights through timm's own loader, which drops the head (num_classes=0)
            pretrained, model_kwargs = True, {**model_kwargs, "pretrained_cfg_overlay": {"file": str(checkpoint)}}
        try:
            with torch.random.fork_rng(devices=[]):  # weights not loaded are drawn from `seed`, the same in every run
                torch.manual_seed(seed)
                model = timm.create_model(name, pretrained=pretrained, num_classes=0, **model_kwargs)
        except Exception as error:  # offline: the hub download fails deep inside huggingface_hub
            raise RuntimeError(
                f"timm could not build {name!r} with pretrained={pretrained} ({type(error).__name__}: {error}).\n"
                "Pretrained weights come from the Hugging Face hub: run once with internet access (they are cached in "
                "~/.cache/huggingface), or copy that cache here and set HF_HUB_OFFLINE=1."
            ) from error
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
    def from_profile(cls, profile: Profile, device: str, checkpoint: Path | None = None) -> "MaskEmbedder":
        """`checkpoint`: weights of the profile's embedder trained by embedder_training (None: as timm gives them)."""
        return cls(profile.embedder, profile.embedder_pretrained, profile.embedder_kwargs, profile.embedder_data_config,
                   device, profile.teacher_batch, profile.precision, profile.channels_last, checkpoint,
                   profile.embedder_seed)

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
    """Identical masks of one image (every point on a part gets that part's mask) kept once; masks (B, P, L, H, W)."""
    B, P, L, H, W = masks.shape
    unique, where = [], []
    for image_masks in masks:
        distinct, inverse = torch.unique(image_masks.reshape(P * L, H * W), dim=0, return_inverse=True)
        where.append(inverse + sum(len(u) for u in unique))
        unique.append(distinct.reshape(-1, H, W))
    owner = torch.cat([torch.full((len(u),), b, device=masks.device) for b, u in enumerate(unique)])
    return DistinctMasks(torch.cat(unique), owner, torch.stack(where).reshape(B, P, L).cpu())


def embed_masks(images: torch.Tensor, masks: DistinctMasks, embedder: MaskEmbedder, crops) -> dict:
    """{crop: (B, P, L, D) float32 on the CPU} for images (B, H, W, 3) uint8 and their distinct masks: each
    distinct mask is embedded once, and the masks of all B images share the embedder's batches."""
    images = images.to(embedder.device)
    unique, owner = masks.masks.to(embedder.device), masks.owner.to(embedder.device)
    return {crop: embedder.embed(images, unique, owner, crop)[masks.where] for crop in crops}


def teacher_masks(teacher, pixels: np.ndarray, paths) -> torch.Tensor:
    """(B, P, L, H, W) bool masks of images (B, H, W, 3): a SamTeacher's fast path takes the batch in one call,
    any other teacher (a callable of one image and its path) is called image by image."""
    if isinstance(teacher, SamTeacher):
        return teacher.masks(torch.from_numpy(pixels), paths)
    return torch.stack([teacher(image, path) for image, path in zip(pixels, paths)])


def make_teacher(profile: Profile, device: str):
    if profile.teacher == "ground_truth":
        return GroundTruthTeacher(profile.image_size, profile.grid)
    if profile.teacher == "sam":
        return SamTeacher.from_checkpoint(
            profile.sam_model,
            project_root() / profile.sam_checkpoint_dir,
            profile.image_size,
            profile.grid,
            level_order=profile.level_order,
            device=device,
            points_per_batch=profile.teacher_batch,
            precision=profile.sam_precision,
            labels=profile.point_labels,
        )
    raise ValueError(f"unknown teacher {profile.teacher!r}: use 'ground_truth' or 'sam'")


def manifest(profile: Profile, images: ImageSet, crop: str, dim: int, data_config: dict) -> dict:
    """Everything the targets depend on; a stored file is used only if its manifest equals this one."""
    teacher = {"kind": profile.teacher, "level_order": profile.level_order}
    if profile.teacher == "sam":  # what changes SAM's masks: the model, its prompts and its precision
        teacher |= {"sam_model": profile.sam_model, "point_labels": profile.point_labels,
                    "precision": profile.sam_precision}
    fields = {
        "dataset": images.root.name,  # e.g. imagenette2, or the generated scenes' folder (their seed and size)
        "split": images.split,
        "paths": images.relative_paths(),
        "teacher": teacher,
        "embedder": {
            "name": profile.embedder,
            "pretrained": profile.embedder_pretrained,
            "kwargs": profile.embedder_kwargs,
            "data_config": data_config,
            "training": training_recipe(profile),  # None: used as timm gives it
            "seed": profile.embedder_seed,  # the weights of an untrained, randomly initialised embedder
        },
        "crop": crop,
        "image_size": profile.image_size,
        "grid": profile.grid,
        "patch_size": profile.image_size // profile.grid,  # pixels per patch side; its centre is the prompt point
        "levels": profile.levels,
        "dim": dim,
        "precision": profile.precision,  # the embedder's (autocast)
        "dtype": "float16",
    }
    return json.loads(json.dumps(fields))  # as it will read back from disk (tuples become lists)


def targets_path(directory: Path, split: str, crop: str) -> Path:
    return Path(directory) / f"targets-{split}-crop_{crop}.npy"


def manifest_mismatch(found: dict, expected: dict) -> list[str]:
    """Names of the manifest fields that differ (the image list is summarised, not printed)."""
    return [key for key in sorted(set(found) | set(expected)) if found.get(key) != expected.get(key)]


def load_targets(directory: Path, expected: dict) -> np.ndarray:
    """The stored targets for `expected` (a manifest), memory-mapped; refused if anything they depend on differs."""
    path = targets_path(directory, expected["split"], expected["crop"])
    manifest_file = path.with_suffix(".json")
    if not path.exists() or not manifest_file.exists():
        raise FileNotFoundError(f"no targets at {path}: build them first (notebook 02, or partwhole.targets.build_targets)")
    found = json.loads(manifest_file.read_text())
    stale = manifest_mismatch(found, expected)
    if stale:
        details = ", ".join(f"{k}: stored {_short(found.get(k))} vs run {_short(expected.get(k))}" for k in stale)
        raise ValueError(
            f"targets {path} were built for another configuration ({details}). "
            "Delete the file (and its .json) and rebuild them with notebook 02."
        )
    return np.load(path, mmap_mode="r")


def _short(value) -> str:
    if isinstance(value, list) and len(value) > 3:
        return f"[{len(value)} items: {value[0]!r} ... {value[-1]!r}]"
    return repr(value)


def build_targets(
    profile: Profile,
    images: ImageSet,
    pixels: np.ndarray,
    teacher,
    embedder: MaskEmbedder,
    directory: Path,
    crops=CROP_MODES,
    chunk_size: int = 64,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Teacher + embedder over a split, resumable and shardable; returns {crop: manifest} of the files written.

    pixels: the split's uint8 image cache (N, H, W, 3), in `images` order. Images go through the teacher
    `profile.teacher_images` at a time. shard = (rank, world size), by default torch.distributed's (0, 1 without
    it): rank r makes chunks r, r + world, ...; then rank 0 assembles them, once all exist (after a barrier
    under torch.distributed; run by hand, rank 0 last).
    """
    rank, world = shard or _distributed_shard()
    directory = Path(directory)
    manifests = {crop: manifest(profile, images, crop, embedder.dim, embedder.data_config) for crop in crops}
    todo = [c for c in crops if not _is_built(directory, manifests[c])]
    if not todo:
        return manifests
    chunk_dir = directory / f"chunks-{images.split}"
    if rank == 0:
        _check_chunk_manifest(chunk_dir, {c: manifests[c] for c in todo})
    _barrier()  # the other ranks check the manifest rank 0 wrote
    _check_chunk_manifest(chunk_dir, {c: manifests[c] for c in todo})

    P, L = profile.grid**2, profile.levels
    starts = range(0, len(images), chunk_size)
    mine = [start for k, start in enumerate(starts) if k % world == rank]
    timings = {"teacher_s": 0.0, "embed_s": 0.0, "images": 0}
    total = sum(min(start + chunk_size, len(images)) - start for start in mine)
    with tqdm(total=total, desc=f"targets {images.split}" + (f" (rank 0 of {world})" if world > 1 else ""), unit="image",
              mininterval=5, disable=rank != 0) as bar:  # rate and time left; ranks have equal shares
        for start in mine:
            chunk_file = chunk_dir / f"{start:07d}.npz"
            stop = min(start + chunk_size, len(images))
            if chunk_file.exists():
                bar.update(stop - start)
                continue
            chunk = {c: np.empty((stop - start, P, L, embedder.dim), np.float16) for c in todo}
            packed = []
            for first in range(start, stop, profile.teacher_images):
                last = min(first + profile.teacher_images, stop)
                batch = np.array(pixels[first:last])  # a writable copy of the memory-mapped cache
                tick = time.perf_counter()
                masks = distinct_masks(teacher_masks(teacher, batch, images.paths[first:last]))
                tock = time.perf_counter()
                for crop, value in embed_masks(torch.from_numpy(batch), masks, embedder, todo).items():
                    chunk[crop][first - start : last - start] = value.numpy()
                if profile.mask_cache:
                    packed.append(masks)
                timings["teacher_s"] += tock - tick
                timings["embed_s"] += time.perf_counter() - tock
                timings["images"] += last - first
                bar.update(last - first)
            if profile.mask_cache:
                save_masks(directory / f"masks-{images.split}" / f"{start:07d}.npz", packed)
            with atomic_write(chunk_file) as tmp, open(tmp, "wb") as f:
                np.savez(f, **chunk)

    _barrier()  # every rank's chunks are written
    if rank == 0:
        missing = [start for start in starts if not (chunk_dir / f"{start:07d}.npz").exists()]
        if missing:
            raise RuntimeError(f"chunks starting at images {missing} are missing in {chunk_dir}: run the other ranks "
                               f"of this {world}-way split first, then rank 0 again to assemble")
        for crop in todo:
            _assemble(directory, chunk_dir, starts, crop, manifests[crop], len(images), (P, L, embedder.dim))
        for chunk_file in chunk_dir.iterdir():
            chunk_file.unlink()
        chunk_dir.rmdir()
        if timings["images"]:
            (directory / f"timing-{images.split}.json").write_text(json.dumps(timings, indent=1))
    _barrier()  # the assembled targets exist for every rank
    return manifests


def _distributed_shard() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_masks(path: Path, batches: list[DistinctMasks]):
    """The optional mask cache (profile.mask_cache), for visualisation: one file per chunk of images with their
    distinct masks bit-packed (1 bit per pixel) and, per image, point and level, the index of its mask."""
    masks = torch.cat([b.masks for b in batches]).cpu().numpy()
    offsets = np.cumsum([0] + [len(b.masks) for b in batches])
    where = np.concatenate([b.where.numpy() + offset for b, offset in zip(batches, offsets)])
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, packed=np.packbits(masks.reshape(len(masks), -1), axis=1), where=where.astype(np.int32),
                 shape=np.array(masks.shape[1:]))


def load_masks(directory: Path, split: str, index: int) -> torch.Tensor:
    """(P, L, H, W) bool teacher masks of image `index` of a split, from the mask cache."""
    files = sorted((Path(directory) / f"masks-{split}").glob("*.npz"))
    starts = [int(f.stem) for f in files]
    if not files or index < starts[0]:
        raise FileNotFoundError(f"no cached masks for image {index} of {split} in {directory} (profile.mask_cache)")
    k = int(np.searchsorted(starts, index, side="right")) - 1
    with np.load(files[k]) as cache:
        where = cache["where"][index - starts[k]]
        H, W = cache["shape"]
        masks = np.unpackbits(cache["packed"], axis=1, count=H * W).astype(bool).reshape(-1, H, W)
    return torch.from_numpy(masks[where])


def _is_built(directory: Path, expected: dict) -> bool:
    try:
        load_targets(directory, expected)
        return True
    except FileNotFoundError:
        return False


def _check_chunk_manifest(chunk_dir: Path, expected: dict):
    """Chunks left by a killed run are reused only if they were made for exactly this configuration."""
    manifest_file = chunk_dir / "manifest.json"
    if manifest_file.exists():
        found = json.loads(manifest_file.read_text())
        if found != expected:
            raise ValueError(
                f"{chunk_dir} holds partial targets of another configuration: delete that folder to start afresh"
            )
    else:
        with atomic_write(manifest_file) as tmp:
            tmp.write_text(json.dumps(expected))


def _assemble(directory, chunk_dir, starts, crop, manifest_, n_images, item_shape):
    path = targets_path(directory, manifest_["split"], crop)
    with atomic_write(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n_images, *item_shape))
        for start in starts:
            with np.load(chunk_dir / f"{start:07d}.npz") as chunk:
                array[start : start + len(chunk[crop])] = chunk[crop]
        array.flush()
        del array
    with atomic_write(path.with_suffix(".json")) as tmp:  # written last: a manifest vouches for a complete file
        tmp.write_text(json.dumps(manifest_))
