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
from .paths import atomic_path, data_dir
from .profiles import Profile

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
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
            image = ImageOps.exif_transpose(image).convert("RGB")
            return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ValueError(f"cannot read image {path}: {error}. Replace or delete the file and run again.") from error


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
        root = data_dir() / f"synthetic-seed{profile.seed}-{profile.image_size}px-{profile.train_per_class}x{profile.val_per_class}"
        return synthetic.generate(
            root,
            seed=profile.seed,
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


def image_cache(images: ImageSet, size: int, cache_dir: Path) -> np.ndarray:
    """All images of a split as one uint8 array (N, size, size, 3), decoded once and memory-mapped after."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    array_path = cache_dir / f"images-{images.split}-{size}px.npy"
    index_path = array_path.with_suffix(".json")
    index = {"root": str(images.root), "size": size, "paths": images.relative_paths()}
    if array_path.exists() and index_path.exists() and json.loads(index_path.read_text()) == index:
        return np.load(array_path, mmap_mode="r")
    tmp = atomic_path(array_path)
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3))
    for i, path in enumerate(tqdm(images.paths, desc=f"decode {images.split}", mininterval=5)):
        array[i] = load_image(path, size)
    array.flush()
    del array
    tmp.replace(array_path)
    tmp_index = atomic_path(index_path)
    tmp_index.write_text(json.dumps(index))
    tmp_index.replace(index_path)
    return np.load(array_path, mmap_mode="r")
