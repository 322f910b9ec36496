"""Datasets in Imagenette's folder layout (root/train/<class>/*, root/val/<class>/*), loaded as the paper does:
every image converted to RGB and resized (not cropped) to a square.

Images are decoded once into a uint8 cache (a .npy file, memory-mapped) that pretraining, probing and the
teacher read, instead of decoding JPEGs every epoch.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from . import synthetic
from .paths import atomic_write, data_dir
from .profiles import Profile

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}
BAD_IMAGE_CHOICES = ("stop", "skip")
IMAGENETTE_URL_KEY = "IMAGENETTE"  # fastai's URLs.IMAGENETTE: full-size imagenette2, 1.5 GB
IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}


@dataclass(frozen=True)
class ImageSet:
    """One split of an image-folder dataset, in a fixed order (sorted classes, sorted file names)."""

    root: Path
    split: str
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64, index into classes

    def __len__(self):
        return len(self.paths)

    def relative_paths(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.paths]


def list_images(root: Path, split: str) -> ImageSet:
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: a dataset needs {split}/<class>/<images> under {root}")
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}/<class>/")
    return ImageSet(Path(root), split, classes, tuple(paths), np.array(labels, dtype=np.int64))


def load_image(path: Path, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3): EXIF orientation applied, any mode converted to RGB, resized without cropping."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale still >= size (fast for huge photos)
            image = ImageOps.exif_transpose(image)
            if image.mode in SIXTEEN_BIT_MODES:  # convert() would clip 16-bit values at 255 instead of scaling them
                image = Image.fromarray((np.asarray(image, dtype=np.float32) / 257).round().astype(np.uint8))
            return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL reports unreadable, truncated and non-image files as OSErrors (UnidentifiedImageError among them)
        raise ValueError(f"cannot read image {path}: {error}") from error


def imagenette_root(path: str | None) -> Path:
    """Full-size Imagenette 2: the given folder, or fastai's copy (downloaded by untar_data if missing)."""
    if path is not None:
        root = Path(path).expanduser()
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise FileNotFoundError(f"{root} is not an Imagenette folder: expected {root}/train and {root}/val")
        return root
    from fastai.data.external import URLs, untar_data

    url = getattr(URLs, IMAGENETTE_URL_KEY)
    try:
        return untar_data(url)
    except Exception as error:  # no internet (URLError, ConnectionError, ...) or a broken archive
        raise RuntimeError(
            f"Imagenette could not be downloaded ({type(error).__name__}: {error}).\n"
            f"Download {url} (1.5 GB), extract it, and pass its folder as dataset_path "
            "(e.g. --set dataset_path=/data/imagenette2), or run again with internet access."
        ) from error


def dataset_root(profile: Profile) -> Path:
    """Root folder of the profile's dataset, generating the synthetic scenes on first use."""
    if profile.dataset == "imagenette":
        return imagenette_root(profile.dataset_path)
    if profile.dataset == "synthetic":
        root = data_dir() / f"synthetic-seed{profile.dataset_seed}-{profile.image_size}px-{profile.train_per_class}x{profile.val_per_class}"
        return synthetic.generate(
            root,
            seed=profile.dataset_seed,
            image_size=profile.image_size,
            train_per_class=profile.train_per_class,
            val_per_class=profile.val_per_class,
        )
    raise ValueError(f"unknown dataset {profile.dataset!r}: use 'synthetic' or 'imagenette'")


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of train into (fit, holdout) indices, both sorted."""
    rng = np.random.default_rng(seed)
    holdout = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        holdout += list(rng.choice(members, size=round(fraction * len(members)), replace=False))
    is_holdout = np.zeros(len(labels), dtype=bool)
    is_holdout[holdout] = True
    return np.flatnonzero(~is_holdout), np.flatnonzero(is_holdout)


class BadImages(ValueError):
    pass


def image_cache(images: ImageSet, size: int, cache_dir: Path, on_bad_image: str = "stop") -> tuple[ImageSet, np.ndarray]:
    """The split's readable images as one uint8 array (N, size, size, 3), decoded once, memory-mapped after.

    Unreadable files (truncated, empty, not an image) are listed with their reason in the cache's index
    (images-<split>-<size>px.json). on_bad_image="stop" (the default) raises BadImages naming each of them,
    before anything is trained; "skip" leaves them out and returns the shortened ImageSet, which every later
    step (targets, training) then uses, so nothing is silently dropped along the way.
    """
    if on_bad_image not in BAD_IMAGE_CHOICES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_CHOICES}, not {on_bad_image!r}")
    array_path = Path(cache_dir) / f"images-{images.split}-{size}px.npy"
    index_path = array_path.with_suffix(".json")
    listing = {"root": str(images.root), "size": size, "paths": images.relative_paths()}
    index = json.loads(index_path.read_text()) if index_path.exists() and array_path.exists() else None
    if index is None or {k: index[k] for k in listing} != listing:
        index = _decode_all(images, size, array_path, index_path, listing)
    if index["refused"] and on_bad_image == "stop":
        lines = "\n".join(f"  {item['path']}: {item['reason']}" for item in index["refused"])
        raise BadImages(
            f"{len(index['refused'])} of {len(images)} {images.split} images cannot be read (listed in {index_path}):\n"
            f"{lines}\nReplace or delete them, or run with on_bad_image='skip' to leave them out (they stay listed)."
        )
    kept = np.array([i for i, p in enumerate(listing["paths"]) if p not in {r["path"] for r in index["refused"]}])
    subset = ImageSet(images.root, images.split, images.classes, tuple(images.paths[i] for i in kept), images.labels[kept])
    return subset, np.load(array_path, mmap_mode="r")


def _decode_all(images: ImageSet, size: int, array_path: Path, index_path: Path, listing: dict) -> dict:
    refused, kept = [], []
    with atomic_write(array_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3))
        for path, relative in zip(tqdm(images.paths, desc=f"decode {images.split}", mininterval=5), listing["paths"]):
            try:
                array[len(kept)] = load_image(path, size)
                kept.append(relative)
            except ValueError as error:
                refused.append({"path": relative, "reason": str(error.__cause__ or error)})
        array.flush()
        del array
        if refused:  # shrink to the images kept
            full = np.load(tmp, mmap_mode="r")
            np.save(tmp.with_suffix(".kept.npy"), full[: len(kept)])
            del full
            tmp.with_suffix(".kept.npy").replace(tmp)
    index = listing | {"refused": refused}
    with atomic_write(index_path) as tmp:
        tmp.write_text(json.dumps(index, indent=1))
    return index
