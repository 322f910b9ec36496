"""Distillation targets: the embedding of every teacher mask, for every patch point and level, per split.

For each image the teacher gives masks (P points, 3 levels, H, W) and the embedder turns each masked image into a
vector (embedder.py): (P, 3, D) per image. Masks are consumed as they are made and never written to disk (the
authors' pickled masks take 29.5 MB per image, 395 GB for Imagenette), unless the profile asks for the bit-packed
mask cache, which the controls reuse instead of running SAM again.

Targets are stored per split and strategy as float16 (images, P, 3, D) .npy with a JSON manifest of everything
they depend on; a run uses them only if its own manifest is the same. Work is written in chunks of images, so a
killed run resumes at the last complete chunk. Under torchrun the chunks are shared out between the ranks and rank
0 assembles them (`python -m partwhole.scale.multigpu targets`).
"""
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm  # a widget in JupyterLab (with ipywidgets), text elsewhere

from ..core.artefacts import (DamagedFile, atomic_write, check_settings, first_non_finite, load_array,
                              preallocated_memmap, read_json, write_json)
from ..datasets.data import ImageSet
from .embedder import CROP_MODES, DistinctMasks, MaskEmbedder, distinct_masks, embed_masks, weights_digest
from .teachers import teacher_masks

FIX = "Rebuild the targets: run notebook 02 (or `python -m partwhole.scale.multigpu targets`); they are made afresh."


def teacher_manifest(profile) -> dict:
    """What the teacher's masks depend on (the masks of one image are the same whenever this is)."""
    teacher = {"kind": profile.teacher, "level_order": profile.level_order}
    if profile.teacher == "sam":  # the model, its weights, its prompts and its precision
        teacher |= {"sam_model": profile.sam_model, "weights": "random" if profile.random_weights else "released",
                    "point_labels": profile.point_labels, "precision": profile.sam_precision}
    return teacher


def manifest(profile, images: ImageSet, crop: str, dim: int, data_config: dict) -> dict:
    """Everything the targets depend on; a stored file is used only if its manifest equals this one."""
    fields = {
        "dataset": images.root.name,  # e.g. imagenette2, or the generated scenes' folder (their seed and size)
        "split": images.split,
        "paths": images.relative_paths(),
        "teacher": teacher_manifest(profile),
        "embedder": {
            "name": profile.embedder,
            "pretrained": profile.embedder_pretrained and not profile.random_weights,
            "kwargs": profile.embedder_kwargs,
            "image_size": profile.embedder_image_size,
            "data_config": data_config,
            "weights": weights_digest(profile.embedder_weights),  # a weights file's name and SHA-256, or None
            "seed": profile.embedder_seed,  # the weights of an untrained, randomly initialised embedder
            "precision": profile.precision,
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


def level_cosine(targets: np.ndarray, first: int, second: int, where: np.ndarray | None = None) -> float:
    """Mean cosine similarity between two levels' targets of the same points: targets (images, points, levels, dim),
    `where` (images, points) bool picks the points (default all). Near 1: the levels say the same thing."""
    unit = torch.nn.functional.normalize(torch.from_numpy(np.asarray(targets, dtype=np.float32)), dim=-1)
    cosine = (unit[:, :, first] * unit[:, :, second]).sum(dim=-1)
    return float(cosine.mean() if where is None else cosine[torch.from_numpy(np.asarray(where))].mean())


def targets_path(directory: Path, split: str, crop: str) -> Path:
    return Path(directory) / f"targets-{split}-crop_{crop}.npy"


def load_targets(directory: Path, expected: dict) -> np.ndarray:
    """The stored targets for `expected` (a manifest), memory-mapped; refused, naming the file, if anything they
    depend on differs or the file does not hold what its manifest says."""
    path = targets_path(directory, expected["split"], expected["crop"])
    manifest_file = path.with_suffix(".json")
    if not path.exists() or not manifest_file.exists():
        raise FileNotFoundError(f"no targets at {path}: build them first (notebook 02, or "
                                "`python -m partwhole.scale.multigpu targets`)")
    found = read_json(manifest_file, "targets manifest", FIX)
    check_settings(path, found, expected, "targets", "Delete the file (and its .json) and rebuild them with notebook 02.")
    points = expected["grid"] ** 2
    targets = load_array(path, "targets", FIX, shape=(len(expected["paths"]), points, expected["levels"],
                                                      expected["dim"]), dtype=np.float16)
    bad = first_non_finite(targets)
    if bad is not None:
        raise DamagedFile(f"targets {path} hold NaN or infinity (image {bad}, {expected['paths'][bad]}, first); "
                          f"training on them gives NaN. {FIX}")
    return targets


def build_targets(
    profile,
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
    todo = [c for c in crops if not _is_built(directory, manifests[c], rank)]
    if not todo:
        return manifests
    chunk_dir = directory / f"chunks-{images.split}"
    wanted = {c: manifests[c] for c in todo}
    if rank == 0:
        _check_chunk_manifest(chunk_dir, wanted)
        if profile.mask_cache:
            _check_chunk_manifest(mask_cache_dir(directory, images.split), mask_manifest(profile, images))
    _barrier()  # the other ranks check the manifest rank 0 wrote
    _check_chunk_manifest(chunk_dir, wanted)

    P, L = profile.grid**2, profile.levels
    starts = range(0, len(images), chunk_size)
    mine = [start for k, start in enumerate(starts) if k % world == rank]
    timings = {"teacher_s": 0.0, "embed_s": 0.0, "images": 0}
    total = sum(min(start + chunk_size, len(images)) - start for start in mine)
    # rank 0's bar alone (the ranks have equal shares); TQDM_DISABLE turns it off too, which disable=False would not
    quiet = {"disable": True} if rank else {}
    with tqdm(total=total, desc=f"targets {images.split}" + (f" (rank 0 of {world})" if world > 1 else ""), unit="image",
              mininterval=5, **quiet) as bar:
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
            for crop, values in chunk.items():  # an embedder that overflows float16, or gives NaN: stop here
                bad = first_non_finite(values)
                if bad is not None:
                    raise ValueError(f"the embedder gave NaN or infinity for {images.paths[start + bad]} (crop {crop}): "
                                     f"check the embedder ({profile.embedder}, weights {profile.embedder_weights}) "
                                     "and its precision; nothing was written for these images")
            if profile.mask_cache:
                save_masks(mask_cache_dir(directory, images.split) / f"{start:07d}.npz", packed)
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
            write_json(directory / f"timing-{images.split}.json", timings)
    _barrier()  # the assembled targets exist for every rank
    return manifests


def _distributed_shard() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mask_cache_dir(directory: Path, split: str) -> Path:
    return Path(directory) / f"masks-{split}"


def mask_manifest(profile, images: ImageSet) -> dict:
    """What the cached masks of a split depend on: the images and the teacher."""
    return json.loads(json.dumps({"dataset": images.root.name, "split": images.split, "paths": images.relative_paths(),
                                  "teacher": teacher_manifest(profile), "image_size": profile.image_size,
                                  "grid": profile.grid}))


def save_masks(path: Path, batches: list[DistinctMasks]):
    """The optional mask cache (profile.mask_cache): one file per chunk of images with their distinct masks
    bit-packed (1 bit per pixel) and, per image, point and level, the index of its mask."""
    masks = torch.cat([b.masks for b in batches]).cpu().numpy()
    offsets = np.cumsum([0] + [len(b.masks) for b in batches])
    where = np.concatenate([b.where.numpy() + offset for b, offset in zip(batches, offsets)])
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, packed=np.packbits(masks.reshape(len(masks), -1), axis=1), where=where.astype(np.int32),
                 shape=np.array(masks.shape[1:]))


class CachedMasks:
    """The teacher's masks of a split read back from the mask cache: a teacher for the images of that split, by
    path (`teacher(image, path)`), or by index (`masks(index)`). Refused if the cache was made for other images or
    another teacher, or is incomplete."""

    def __init__(self, directory: Path, profile, images: ImageSet):
        self.folder = mask_cache_dir(directory, images.split)
        fix = "Delete that folder; the next target build with mask_cache on makes it again."
        found = read_json(self.folder / "manifest.json", "mask cache manifest", fix)
        check_settings(self.folder, found, mask_manifest(profile, images), "mask cache", fix)
        self.files = sorted(self.folder.glob("[0-9]*.npz"))
        self.starts = [int(f.stem) for f in self.files]
        self.index = {str(path): i for i, path in enumerate(images.paths)}
        self.n_images = len(images)

    @staticmethod
    def available(directory: Path, profile, images: ImageSet) -> bool:
        """Whether a complete cache of these images' masks by this teacher exists."""
        try:
            return CachedMasks(directory, profile, images).complete()
        except (FileNotFoundError, DamagedFile, ValueError):
            return False

    def complete(self) -> bool:
        return bool(self.files) and self.starts[0] == 0 and sum(self._count(f) for f in self.files) == self.n_images

    def _count(self, file: Path) -> int:
        try:
            with np.load(file) as cache:
                return len(cache["where"])
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise DamagedFile(f"mask cache file {file} is damaged ({type(error).__name__}: {error}). Delete "
                              f"{self.folder}; the next target build with mask_cache on makes it again.") from error

    def masks(self, index: int) -> torch.Tensor:
        """(P, L, H, W) bool masks of image `index` of the split."""
        if not self.files or index < self.starts[0]:
            raise FileNotFoundError(f"no cached masks for image {index} in {self.folder} (profile.mask_cache)")
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        try:
            with np.load(self.files[k]) as cache:
                where = cache["where"][index - self.starts[k]]
                H, W = cache["shape"]
                masks = np.unpackbits(cache["packed"], axis=1, count=H * W).astype(bool).reshape(-1, H, W)
        except (ValueError, OSError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as error:
            raise DamagedFile(f"mask cache file {self.files[k]} is damaged ({type(error).__name__}: {error}). Delete "
                              f"{self.folder}; the next target build with mask_cache on makes it again.") from error
        return torch.from_numpy(masks[where])

    def __call__(self, image, path) -> torch.Tensor:
        return self.masks(self.index[str(path)])


def _is_built(directory: Path, expected: dict, rank: int) -> bool:
    """Whether the targets exist for `expected`; a damaged file is deleted (by rank 0) and made again."""
    try:
        load_targets(directory, expected)
        return True
    except FileNotFoundError:
        return False
    except DamagedFile as error:
        if rank == 0:
            print(f"{error} Building them again.")
            path = targets_path(directory, expected["split"], expected["crop"])
            path.with_suffix(".json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        return False


def _check_chunk_manifest(chunk_dir: Path, expected: dict):
    """Chunks left by a killed run are reused only if they were made for exactly this configuration."""
    manifest_file = chunk_dir / "manifest.json"
    if manifest_file.exists():
        fix = f"Delete {chunk_dir} to start afresh."
        check_settings(chunk_dir, read_json(manifest_file, "chunk manifest", fix), expected, "partial work", fix)
    else:
        write_json(manifest_file, expected)


def _assemble(directory, chunk_dir, starts, crop, manifest_, n_images, item_shape):
    path = targets_path(directory, manifest_["split"], crop)
    with atomic_write(path) as tmp:
        array = preallocated_memmap(tmp, np.float16, (n_images, *item_shape))
        for start in starts:
            chunk_file = chunk_dir / f"{start:07d}.npz"
            try:
                with np.load(chunk_file) as chunk:
                    array[start : start + len(chunk[crop])] = chunk[crop]
            except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
                raise DamagedFile(f"partial targets {chunk_file} are damaged ({type(error).__name__}: {error}). "
                                  "Delete that file and build again: only its images are redone.") from error
        array.flush()
        del array
    write_json(path.with_suffix(".json"), manifest_)  # written last: a manifest vouches for a complete file
