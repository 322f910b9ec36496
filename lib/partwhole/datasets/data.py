"""Datasets in Imagenette's folder layout (root/train/<class>/*, root/val/<class>/*), loaded as the paper does:
every image converted to RGB and resized (not cropped) to a square.

Images are decoded once into a uint8 cache (a .npy file, memory-mapped) that pretraining, probing and the
teacher read, instead of decoding JPEGs every epoch.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm  # a widget in JupyterLab (with ipywidgets), text elsewhere

from ..core.artefacts import DamagedFile, atomic_write, data_dir, load_array, preallocated_memmap, read_json, write_json
from ..core.downloads import imagenette_root
from . import synthetic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}
BAD_IMAGE_CHOICES = ("stop", "skip")
# files allowed beside the images of a dataset
COMPANION_SUFFIXES = {"synthetic": (synthetic.HIERARCHY_SUFFIX,), "imagenette": (), "imagenette_like": ()}


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


class DatasetError(ValueError):
    """A dataset folder whose layout would mislabel images: stray files or folders, classes that differ by split."""


def _listed(paths: list[Path], limit: int = 10) -> str:
    return "\n".join(f"  {p}" for p in paths[:limit]) + (f"\n  ... and {len(paths) - limit} more" if len(paths) > limit
                                                          else "")


def list_images(root: Path, split: str, classes: tuple[str, ...] | None = None,
                companions=(synthetic.HIERARCHY_SUFFIX,)) -> ImageSet:
    """The images of root/<split>/<class>/ in a fixed order (sorted classes, sorted file names).

    Labels number the classes in sorted order, so every split must hold the same class folders: with `classes`
    (the train split's) a split naming other classes is refused, naming the differences. Hidden entries (names
    starting with a dot, such as .ipynb_checkpoints) are ignored; anything else that is not a class folder, or
    inside one not an image file (.jpg, .jpeg, .png) or one of `companions` (file-name endings), is refused with
    its path, as is a class folder without images.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: a dataset needs {split}/<class>/<images> under {root}")
    entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    stray = [e for e in entries if not e.is_dir()]
    if stray:
        raise DatasetError(f"{folder} must hold one folder per class and nothing else; move or delete:\n{_listed(stray)}")
    found = tuple(e.name for e in entries)
    if not found:
        raise DatasetError(f"{folder} holds no class folders: a dataset needs {split}/<class>/<images> under {root}")
    shared = _same_folder(entries)
    if shared:
        raise DatasetError(f"class folders {', '.join(shared)} in {folder} are the same folder (a link): their images "
                           "would carry two labels. Give each class a folder of its own.")
    if classes is not None and found != tuple(classes):
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DatasetError(f"{folder} does not hold the classes of the train split (labels would shift): missing "
                           f"{missing or 'none'}, extra {extra or 'none'}. Give every split the same class folders.")
    paths, labels, refused, empty = [], [], [], []
    for label, name in enumerate(found):
        files = []
        for entry in sorted((folder / name).iterdir()):
            if entry.name.startswith(".") or (entry.is_file() and entry.name.endswith(tuple(companions))):
                continue
            if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
                files.append(entry)
            else:  # a folder (even one named like an image), or a file of another kind
                refused.append(entry)
        if not files:
            empty.append(folder / name)
        paths += files
        labels += [label] * len(files)
    if refused:
        raise DatasetError(f"{folder}/<class>/ must hold image files ({', '.join(sorted(IMAGE_SUFFIXES))}) only; move "
                           f"or delete:\n{_listed(refused)}")
    if empty:
        raise DatasetError(f"class folders without images (every class needs some):\n{_listed(empty)}")
    twice = _same_file(paths)
    if twice:
        raise DatasetError(f"the same image file is found under two classes (links), so it would carry two labels; "
                           f"keep one:\n{_listed(twice)}")
    return ImageSet(Path(root), split, found, tuple(paths), np.array(labels, dtype=np.int64))


def _same_folder(entries: list[Path]) -> list[str]:
    """Names of class folders that resolve to a folder another class already names (a symbolic link to it)."""
    seen, shared = {}, []
    for entry in entries:
        real = entry.resolve()
        if real in seen:
            shared.append(f"{seen[real]} and {entry.name}")
        seen.setdefault(real, entry.name)
    return shared


def _same_file(paths: list[Path]) -> list[Path]:
    """Image paths that resolve to a file listed before them (one file linked into two class folders)."""
    seen, twice = set(), []
    for path in paths:
        real = path.resolve()
        if real in seen:
            twice.append(path)
        seen.add(real)
    return twice


def check_class_count(images: ImageSet, n_classes: int):
    """Refuse a dataset whose number of classes differs from the classifier's outputs, before any costly step (the
    probe would fail on the first label out of range, after the targets and the pretraining)."""
    if len(images.classes) != n_classes:
        raise DatasetError(f"{images.root / images.split} holds {len(images.classes)} class folders, the study's "
                           f"classifier has {n_classes} outputs (Imagenette's classes): give a dataset of "
                           f"{n_classes} classes")


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


def dataset_root(profile) -> Path:
    """Root folder of the profile's dataset: Imagenette (found or downloaded), or generated on first use."""
    if profile.dataset == "imagenette":
        return imagenette_root(profile.dataset_path)
    sizes = f"{profile.train_per_class}x{profile.val_per_class}"
    if profile.dataset == "imagenette_like":
        root = data_dir() / f"imagenette_like-seed{profile.dataset_seed}-{sizes}"
        return synthetic.imagenette_like(root, profile.dataset_seed, profile.train_per_class, profile.val_per_class)
    root = data_dir() / f"synthetic-seed{profile.dataset_seed}-{profile.image_size}px-{sizes}-{profile.scene_key()}"
    return synthetic.generate(root, seed=profile.dataset_seed, image_size=profile.image_size,
                              train_per_class=profile.train_per_class, val_per_class=profile.val_per_class,
                              style=profile.scene_style())


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of train into (fit, holdout) indices, both sorted; refused when either would be
    empty (too few images per class for the fraction)."""
    rng = np.random.default_rng(seed)
    holdout = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        holdout += list(rng.choice(members, size=round(fraction * len(members)), replace=False))
    is_holdout = np.zeros(len(labels), dtype=bool)
    is_holdout[holdout] = True
    if is_holdout.all() or not is_holdout.any():
        raise DatasetError(f"holdout_fraction={fraction} of {len(labels)} train images ({np.bincount(labels).min()} "
                           "in the smallest class) leaves nothing to " + ("fit on" if is_holdout.all() else "hold out")
                           + ": give more images per class or another holdout_fraction")
    return np.flatnonzero(~is_holdout), np.flatnonzero(is_holdout)


class BadImages(ValueError):
    pass


def image_cache(images: ImageSet, size: int, cache_dir: Path, on_bad_image: str = "stop") -> tuple[ImageSet, np.ndarray]:
    """The split's readable images as one uint8 array (N, size, size, 3), decoded once, memory-mapped after.

    The cache is reused while every file keeps its path, size and modification time; a file replaced or changed
    since makes the split be decoded again (as does a damaged cache). Unreadable files (truncated, empty, not an
    image) are listed with their reason in the cache's index (images-<split>-<size>px.json). on_bad_image="stop"
    (the default) raises BadImages naming each of them, before anything is trained; "skip" leaves them out and
    returns the shortened ImageSet, which every later step (targets, training) then uses, so nothing is silently
    dropped along the way.
    """
    if on_bad_image not in BAD_IMAGE_CHOICES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_CHOICES}, not {on_bad_image!r}")
    array_path = Path(cache_dir) / f"images-{images.split}-{size}px.npy"
    index_path = array_path.with_suffix(".json")
    listing = {"root": str(images.root), "size": size, "paths": images.relative_paths(),
               "files": [[p.stat().st_size, p.stat().st_mtime_ns] for p in images.paths]}
    pixels = _cached(array_path, index_path, listing)
    if pixels is None:
        index = _decode_all(images, size, array_path, index_path, listing)
        pixels = load_array(array_path, "image cache", "Delete it; it is decoded again.")
    else:
        index = read_json(index_path, "image cache index", "Delete it; the cache is decoded again.")
    refused_paths = {r["path"] for r in index["refused"]}
    if index["refused"] and on_bad_image == "stop":
        lines = "\n".join(f"  {item['path']}: {item['reason']}" for item in index["refused"])
        raise BadImages(
            f"{len(index['refused'])} of {len(images)} {images.split} images cannot be read (listed in {index_path}):\n"
            f"{lines}\nReplace or delete them (the cache sees a replaced file and decodes the split again), or run "
            "with on_bad_image='skip' to leave them out (they stay listed)."
        )
    kept = np.array([i for i, p in enumerate(listing["paths"]) if p not in refused_paths], dtype=np.int64)
    subset = ImageSet(images.root, images.split, images.classes, tuple(images.paths[i] for i in kept), images.labels[kept])
    left = np.bincount(subset.labels, minlength=len(images.classes))
    if not left.all():
        lost = [name for name, count in zip(images.classes, left) if not count]
        raise BadImages(f"with the unreadable images left out (listed in {index_path}), the {images.split} classes "
                        f"{lost} have no image left: replace those files, every class needs some")
    return subset, pixels


def _cached(array_path: Path, index_path: Path, listing: dict) -> np.ndarray | None:
    """The cached pixels if the cache holds exactly these files, unchanged; None (saying why) otherwise."""
    if not (array_path.exists() and index_path.exists()):
        return None
    try:
        index = read_json(index_path, "image cache index", "")
        if {k: index.get(k) for k in listing} != listing:
            changed = [p for p, a, b in zip(listing["paths"], listing["files"], index.get("files") or [])
                       if a != b]
            if index.get("paths") == listing["paths"] and changed:
                print(f"{len(changed)} of {len(listing['paths'])} images changed since "
                      f"{array_path.name} was made ({changed[0]} first): decoding the split again")
            return None
        kept = len(listing["paths"]) - len(index["refused"])
        return load_array(array_path, "image cache", "", shape=(kept, listing["size"], listing["size"], 3),
                          dtype=np.uint8)
    except DamagedFile as error:
        print(f"{str(error).rstrip('. ')}: decoding the split again")
        return None


def _decode_all(images: ImageSet, size: int, array_path: Path, index_path: Path, listing: dict) -> dict:
    refused, kept = [], []
    with atomic_write(array_path) as tmp:
        array = preallocated_memmap(tmp, np.uint8, (len(images), size, size, 3))
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
            shrunk = tmp.with_name(tmp.name + ".kept")
            with atomic_write(shrunk) as shrunk_tmp, open(shrunk_tmp, "wb") as file:
                np.save(file, full[: len(kept)])
            del full
            shrunk.replace(tmp)
    index = listing | {"refused": refused}
    write_json(index_path, index)  # written last: an index vouches for a complete array
    return index
