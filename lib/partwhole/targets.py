"""Distillation targets: the embedding of every teacher mask, for every patch point and level.

For each image: the teacher gives masks (P points, 3 levels, H, W); each masked image is embedded by a timm
model through timm's own eval transform for that model; the result is (P, 3, D). Masks are consumed as they
are made and never written to disk (the authors' pickled masks take 29.5 MB per image, 395 GB for Imagenette).

Mask strategies (paper Fig. 2, Table 1):
- "none": image * mask, full frame kept (background black), so the embedding keeps the part's position.
- "bbox": image * mask cropped to the mask's bounding box. An empty mask is embedded as it is (all black).
Both strategies come out of the same teacher pass. Identical masks of one image (common: every point on a
part gets that part's mask) are embedded once.

Targets are stored per split and strategy as float16 (images, P, 3, D) .npy with a JSON manifest; work is
written in chunks of images, so a killed run resumes at the last complete chunk.
"""
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import ImageSet
from .embedder_training import training_recipe
from .paths import atomic_write, project_root
from .batching import HalvingBatches
from .profiles import Profile
from .teacher import GroundTruthTeacher, SamTeacher

CROP_MODES = ("none", "bbox")


class MaskEmbedder:
    """A timm model by name (pooled features, num_classes=0) with its own eval transform."""

    def __init__(self, name: str, pretrained: bool, model_kwargs: dict, data_config: dict, device: str,
                 batch_size: int = 64, checkpoint: Path | None = None):
        if checkpoint is not None:  # local weights through timm's own loader, which drops the head (num_classes=0)
            pretrained, model_kwargs = True, {**model_kwargs, "pretrained_cfg_overlay": {"file": str(checkpoint)}}
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, **model_kwargs)
        except Exception as error:  # offline: the hub download fails deep inside huggingface_hub
            raise RuntimeError(
                f"timm could not build {name!r} with pretrained={pretrained} ({type(error).__name__}: {error}).\n"
                "Pretrained weights come from the Hugging Face hub: run once with internet access (they are cached in "
                "~/.cache/huggingface), or copy that cache here and set HF_HUB_OFFLINE=1."
            ) from error
        self.model = model.eval().to(device)
        self.device = device
        self.checkpoint = checkpoint
        self.data_config = timm.data.resolve_model_data_config(self.model, args=dict(data_config))
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)
        self.dim = self.model.num_features
        self.batches = HalvingBatches(batch_size, f"the mask embedder {name}")

    @classmethod
    def from_profile(cls, profile: Profile, device: str, checkpoint: Path | None = None) -> "MaskEmbedder":
        """`checkpoint`: weights of the profile's embedder trained by embedder_training (None: as timm gives them)."""
        return cls(profile.embedder, profile.embedder_pretrained, profile.embedder_kwargs, profile.embedder_data_config,
                   device, profile.teacher_batch, checkpoint)

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """(len(images), dim) float32 features on the CPU."""

        def embed(start, stop):
            batch = torch.stack([self.transform(im) for im in images[start:stop]])
            return self.model(batch.to(self.device)).float().cpu()

        return torch.cat(self.batches.map(embed, len(images)))


def masked_image(image: np.ndarray, mask: np.ndarray, crop: str) -> Image.Image:
    """The image with everything outside `mask` black; cropped to the mask's bounding box for crop="bbox"."""
    masked = image * mask[..., None]
    if crop == "bbox" and mask.any():
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        masked = masked[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    elif crop not in CROP_MODES:
        raise ValueError(f"unknown crop mode {crop!r}; choose one of {CROP_MODES}")
    return Image.fromarray(masked)


def embed_masks(image: np.ndarray, masks: torch.Tensor, embedder: MaskEmbedder, crops) -> dict:
    """{crop: (P, L, D) float32} for masks (P, L, H, W); identical masks are embedded once."""
    P, L, H, W = masks.shape
    unique, inverse = torch.unique(masks.reshape(P * L, H * W), dim=0, return_inverse=True)
    unique = unique.reshape(-1, H, W).numpy()
    out = {}
    for crop in crops:
        features = embedder([masked_image(image, m, crop) for m in unique])
        out[crop] = features[inverse].reshape(P, L, -1)
    return out


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
        )
    raise ValueError(f"unknown teacher {profile.teacher!r}: use 'ground_truth' or 'sam'")


def manifest(profile: Profile, images: ImageSet, crop: str, dim: int, data_config: dict) -> dict:
    """Everything the targets depend on; a stored file is used only if its manifest equals this one."""
    teacher = {"kind": profile.teacher, "level_order": profile.level_order}
    if profile.teacher == "sam":
        teacher["sam_model"] = profile.sam_model
    fields = {
        "split": images.split,
        "paths": images.relative_paths(),
        "teacher": teacher,
        "embedder": {
            "name": profile.embedder,
            "pretrained": profile.embedder_pretrained,
            "kwargs": profile.embedder_kwargs,
            "data_config": data_config,
            "training": training_recipe(profile),  # None: used as timm gives it
        },
        "crop": crop,
        "image_size": profile.image_size,
        "grid": profile.grid,
        "patch_size": profile.image_size // profile.grid,  # pixels per patch side; its centre is the prompt point
        "levels": profile.levels,
        "dim": dim,
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
) -> dict:
    """Teacher + embedder over a split, resumable; returns {crop: manifest} of the files written.

    pixels: the split's uint8 image cache (N, H, W, 3), in `images` order.
    """
    directory = Path(directory)
    manifests = {crop: manifest(profile, images, crop, embedder.dim, embedder.data_config) for crop in crops}
    todo = [c for c in crops if not _is_built(directory, manifests[c])]
    if not todo:
        return manifests
    chunk_dir = directory / f"chunks-{images.split}"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    _check_chunk_manifest(chunk_dir, {c: manifests[c] for c in todo})

    P, L = profile.grid**2, profile.levels
    starts = range(0, len(images), chunk_size)
    timings = {"teacher_s": 0.0, "embed_s": 0.0, "images": 0}
    with tqdm(total=len(images), desc=f"targets {images.split}", mininterval=5) as bar:
        for start in starts:
            chunk_file = chunk_dir / f"{start:07d}.npz"
            stop = min(start + chunk_size, len(images))
            if chunk_file.exists():
                bar.update(stop - start)
                continue
            chunk = {c: np.empty((stop - start, P, L, embedder.dim), np.float16) for c in todo}
            for i in range(start, stop):
                tick = time.perf_counter()
                masks = teacher(np.asarray(pixels[i]), images.paths[i])
                tock = time.perf_counter()
                for crop, value in embed_masks(np.asarray(pixels[i]), masks, embedder, todo).items():
                    chunk[crop][i - start] = value.numpy()
                timings["teacher_s"] += tock - tick
                timings["embed_s"] += time.perf_counter() - tock
                timings["images"] += 1
                bar.update(1)
            with atomic_write(chunk_file) as tmp, open(tmp, "wb") as f:
                np.savez(f, **chunk)

    for crop in todo:
        _assemble(directory, chunk_dir, starts, crop, manifests[crop], len(images), (P, L, embedder.dim))
    for chunk_file in chunk_dir.iterdir():
        chunk_file.unlink()
    chunk_dir.rmdir()
    if timings["images"]:
        (directory / f"timing-{images.split}.json").write_text(json.dumps(timings, indent=1))
    return manifests


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
