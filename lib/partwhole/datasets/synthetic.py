"""Seeded synthetic part-whole scenes in Imagenette's folder layout (the offline default dataset).

Scene grammar
-------------
Every image holds one object, the *whole*, on a cluttered background:

* whole -> 2-5 *parts*, laid out in a unit box fixed per class (``CLASS_PARTS``), each part moved by a small
  random jitter that never makes two parts touch;
* part -> 2-4 *subparts* that tile the part exactly. A part is a shape (disc, ellipse, square, bar, triangle,
  dome) and a split rule (``SPLIT_SIZES``): a centre circle and its surround, left/right or top/bottom halves,
  quadrants, three columns or three rows.

The whole is scaled so its larger side spans 40-80% of the image and placed at a random position. Each subpart gets
its own colour, drawn uniformly from RGB for every class alike and kept visibly apart from all other colours in
the image, so colour carries no class information. Behind the object lies a plain, gradient or wavy-noise
background with 2-6 small clutter shapes that the object partly hides.

Two pairs of classes are built from exactly the same parts (same shapes, sizes, splits and counts) and differ
only in where the parts sit (``SHARED_PART_PAIRS``), so a bag of parts cannot tell them apart:

* ``face`` (two eyes above a mouth) and ``scrambled_face`` (the mouth above the two eyes);
* ``tower`` (triangle, square and disc stacked vertically) and ``row`` (the same three side by side).

Ground truth: beside every ``<class>_<index>.png`` lies ``<class>_<index>.hierarchy.npy``, a uint8 array
(3, H, W) holding subpart ids (level 0), part ids (level 1) and whole ids (level 2). Background pixels are 0 at
every level; each clutter shape is one region carrying the same id at all three levels; the object's subparts
are numbered 1..S, its parts 1..P and the whole is 1, and clutter ids start above S. The image is coloured
from these label maps, so every region is exactly one flat colour.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..core.artefacts import atomic_write, check_settings, load_array, read_json
from ..core.downloads import IMAGENETTE_CLASSES

FORMAT_VERSION = 1  # bump when the scene grammar changes, so old folders are not mistaken for new ones
SPLITS = ("train", "val")
HIERARCHY_SUFFIX = ".hierarchy.npy"  # the ground truth beside each image


class Part(NamedTuple):
    """One part of a class layout: a shape cut into subparts by a split rule, inside a box of the unit square."""

    shape: str
    split: str
    cx: float
    cy: float
    w: float
    h: float


SPLIT_SIZES = {"centre": 2, "halves_lr": 2, "halves_tb": 2, "quadrants": 4, "columns3": 3, "rows3": 3}

_EYE_L, _EYE_R = Part("ellipse", "centre", 0.25, 0.25, 0.4, 0.3), Part("ellipse", "centre", 0.75, 0.25, 0.4, 0.3)
_EYES_LOW = (_EYE_L._replace(cy=0.75), _EYE_R._replace(cy=0.75))
_MOUTH = Part("bar", "columns3", 0.5, 0.8, 0.8, 0.25)
_TOWER_PARTS = (
    Part("triangle", "halves_lr", 0.5, 0.14, 0.28, 0.28),
    Part("square", "quadrants", 0.5, 0.5, 0.28, 0.28),
    Part("disc", "centre", 0.5, 0.86, 0.28, 0.28),
)

# Boxes leave gaps of at least 0.05 between parts, more than twice the jitter, so parts never overlap.
CLASS_PARTS: dict[str, tuple[Part, ...]] = {
    "car": (
        Part("dome", "halves_lr", 0.45, 0.19, 0.5, 0.28),
        Part("bar", "columns3", 0.5, 0.5, 1.0, 0.24),
        Part("disc", "centre", 0.22, 0.83, 0.3, 0.3),
        Part("disc", "centre", 0.78, 0.83, 0.3, 0.3),
    ),
    "dumbbell": (
        Part("disc", "centre", 0.15, 0.5, 0.26, 0.26),
        Part("bar", "halves_lr", 0.5, 0.5, 0.34, 0.18),
        Part("disc", "quadrants", 0.85, 0.5, 0.26, 0.26),
    ),
    "face": (_EYE_L, _EYE_R, _MOUTH),
    "flower": (
        Part("disc", "centre", 0.5, 0.5, 0.3, 0.3),
        Part("ellipse", "halves_tb", 0.5, 0.15, 0.24, 0.3),
        Part("ellipse", "halves_tb", 0.5, 0.85, 0.24, 0.3),
        Part("ellipse", "halves_lr", 0.15, 0.5, 0.3, 0.24),
        Part("ellipse", "halves_lr", 0.85, 0.5, 0.3, 0.24),
    ),
    "house": (
        Part("triangle", "halves_lr", 0.5, 0.22, 0.9, 0.42),
        Part("square", "columns3", 0.5, 0.72, 0.7, 0.5),
    ),
    "mushroom": (
        Part("dome", "columns3", 0.5, 0.27, 1.0, 0.5),
        Part("bar", "halves_lr", 0.5, 0.76, 0.34, 0.4),
    ),
    "row": tuple(p._replace(cx=p.cy, cy=0.5) for p in _TOWER_PARTS),
    "scrambled_face": (*_EYES_LOW, _MOUTH._replace(cy=0.2)),
    "tower": _TOWER_PARTS,
    "tree": (
        Part("triangle", "rows3", 0.5, 0.35, 0.9, 0.7),
        Part("bar", "halves_lr", 0.5, 0.87, 0.2, 0.24),
    ),
}
CLASSES: tuple[str, ...] = tuple(sorted(CLASS_PARTS))
SHARED_PART_PAIRS: tuple[tuple[str, str], ...] = (("face", "scrambled_face"), ("row", "tower"))

JITTER = 0.02  # per-part centre jitter, in units of the layout box
CLUTTER_SIZE = (0.1, 0.22)  # clutter box side, as a fraction of the image side


@dataclass(frozen=True)
class SceneStyle:
    """How a scene is drawn: the larger side of the whole as a fraction of the image side (drawn uniformly), how
    many clutter shapes lie behind it, and whether each clutter shape is split in two halves (a distractor with
    subparts of its own) or is one region at every level."""

    scale: tuple[float, float] = (0.4, 0.8)
    clutter: tuple[int, int] = (2, 6)
    split_clutter: bool = False
    textured: bool = False  # each part's subparts darkened in a pattern of its shape (dots, stripes, checks)
    background_parts: bool = False  # the background a whole of 3 parts (cells) of 2 subparts each, not one region
CLUTTER_SHAPES = ("disc", "ellipse", "square", "bar", "triangle", "dome")
MIN_COLOUR_DISTANCE = 80.0  # RGB Euclidean distance that keeps neighbouring regions visibly apart


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of a shape in box coordinates u, v in [-1, 1] (v grows downwards)."""
    if shape in ("disc", "ellipse"):
        return u**2 + v**2 <= 1
    if shape in ("square", "bar"):
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "triangle":  # apex at the top centre, base along the bottom edge
        return (v <= 1) & (np.abs(u) <= (v + 1) / 2)
    if shape == "dome":  # upper half of an ellipse whose flat side is the bottom edge
        return (v <= 1) & (u**2 + ((v - 1) / 2) ** 2 <= 1)
    raise ValueError(f"unknown shape {shape!r}")


def _subpart_index(split: str, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Which subpart (0..n-1) each point of the box falls in; a, b are the box half-sizes in pixels."""
    if split == "centre":  # a circle of half the shorter half-size: a pupil, a hub
        return ((u * a) ** 2 + (v * b) ** 2 <= (0.5 * min(a, b)) ** 2).astype(np.intp)
    if split == "halves_lr":
        return (u >= 0).astype(np.intp)
    if split == "halves_tb":
        return (v >= 0).astype(np.intp)
    if split == "quadrants":
        return (u >= 0) + 2 * (v >= 0).astype(np.intp)
    if split == "columns3":
        return np.clip(np.floor((u + 1) * 1.5), 0, 2).astype(np.intp)
    if split == "rows3":
        return np.clip(np.floor((v + 1) * 1.5), 0, 2).astype(np.intp)
    raise ValueError(f"unknown split {split!r}")


def _box_coords(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, a: float, b: float):
    return (xs - cx) / a, (ys - cy) / b


def _pick_colour(rng: np.random.Generator, used: list[np.ndarray]) -> np.ndarray:
    """Uniform RGB colour at least MIN_COLOUR_DISTANCE from every colour already used in the image."""
    candidates = rng.integers(0, 256, size=(64, 3)).astype(np.float64)
    if not used:
        return candidates[0]
    nearest = ((candidates[:, None, :] - np.asarray(used)[None]) ** 2).sum(axis=2).min(axis=1)
    far_enough = np.flatnonzero(nearest >= MIN_COLOUR_DISTANCE**2)
    # Falling back to the farthest candidate only happens with very crowded palettes; it keeps the draw bounded.
    return candidates[far_enough[0] if far_enough.size else nearest.argmax()]


# The texture of a part's shape: pixels (x, y) where its pattern is dark, a period of 4 px (visible at 64 px)
TEXTURES = {
    "disc": lambda x, y: (x % 4 < 2) & (y % 4 < 2),  # dots
    "ellipse": lambda x, y: y % 4 < 2,  # horizontal stripes
    "square": lambda x, y: (x // 2 + y // 2) % 2 == 0,  # checks
    "bar": lambda x, y: x % 4 < 2,  # vertical stripes
    "triangle": lambda x, y: (x + y) % 4 < 2,  # diagonal stripes
    "dome": lambda x, y: (x - y) % 4 < 2,  # the other diagonal
}
TEXTURE_SHADE = 0.55  # a dark pattern pixel keeps this share of its subpart's colour
BACKGROUND_CELLS = 3  # the background's parts, with style.background_parts
BACKGROUND_IDS = 200  # their ids (levels 0 and 1) start here, above any object or clutter id


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int, used: list) -> np.ndarray:
    """Float RGB background (H, W, 3): plain, a linear gradient, or a wavy texture with pixel noise."""
    kind = rng.integers(3)
    first = _pick_colour(rng, used)
    used.append(first)
    if kind == 0:
        return np.broadcast_to(first, (size, size, 3)).copy()
    if kind == 1:
        second = _pick_colour(rng, used)
        used.extend([second, (first + second) / 2])  # the middle of the ramp is a background colour too
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / size
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        return first + ramp[..., None] * (second - first)
    waves = np.zeros((size, size, 3))
    for _ in range(3):
        angle, freq, phase = rng.uniform(0, 2 * np.pi), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi, size=3)
        along = (np.cos(angle) * xs + np.sin(angle) * ys) / size
        waves += np.sin(2 * np.pi * freq * along[..., None] + phase)
    return first + 8 * waves + rng.normal(0, 6, size=(size, size, 3))


def render_scene(class_name: str, rng: np.random.Generator, image_size: int = 64,
                 style: SceneStyle = SceneStyle()) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene of a class: (image uint8 (H, W, 3), hierarchy uint8 (3, H, W))."""
    parts = CLASS_PARTS[class_name]
    size = image_size
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    used_colours: list[np.ndarray] = []
    background = _background(rng, xs, ys, size, used_colours)

    levels = np.zeros((3, size, size), np.uint8)
    n_subparts = sum(SPLIT_SIZES[p.split] for p in parts)
    region_colours = np.zeros((256, 3))
    if style.background_parts:  # 3 cells around random points, each cut in two through its point at a random angle
        points, angles = rng.uniform(0, size, size=(BACKGROUND_CELLS, 2)), rng.uniform(0, np.pi, BACKGROUND_CELLS)
        cell = np.argmin((xs[..., None] - points[:, 0]) ** 2 + (ys[..., None] - points[:, 1]) ** 2, axis=-1)
        side = ((xs - points[cell, 0]) * np.cos(angles[cell]) + (ys - points[cell, 1]) * np.sin(angles[cell])) >= 0
        levels[1] = BACKGROUND_IDS + cell
        levels[0] = BACKGROUND_IDS + BACKGROUND_CELLS + 2 * cell + side
        for region in np.unique(levels[0]):
            region_colours[region] = _pick_colour(rng, used_colours)
            used_colours.append(region_colours[region])

    # Clutter first, so the object is drawn over it: a clutter shape is one region at levels 1 and 2, and at level 0
    # too, or its two halves there (style.split_clutter). Its level-0 ids follow the object's subparts.
    for k in range(rng.integers(style.clutter[0], style.clutter[1] + 1)):
        shape = CLUTTER_SHAPES[rng.integers(len(CLUTTER_SHAPES))]
        a, b = rng.uniform(*CLUTTER_SIZE, size=2) * size / 2
        if shape in ("disc", "square"):
            b = a
        u, v = _box_coords(xs, ys, *rng.uniform(0, size, size=2), a, b)
        inside = _inside(shape, u, v)
        levels[1:, inside] = n_subparts + 1 + k
        halves = _subpart_index("halves_lr", u, v, a, b) if style.split_clutter else np.zeros_like(inside, np.intp)
        for half in range(2 if style.split_clutter else 1):
            region = n_subparts + 1 + (2 * k + half if style.split_clutter else k)  # unsplit: its level-1 id
            levels[0][inside & (halves == half)] = region
            region_colours[region] = _pick_colour(rng, used_colours)
            used_colours.append(region_colours[region])

    # Jitter part centres, then scale the union of part boxes so its larger side spans the drawn fraction.
    centres = np.array([(p.cx, p.cy) for p in parts]) + rng.uniform(-JITTER, JITTER, size=(len(parts), 2))
    halves = np.array([(p.w, p.h) for p in parts]) / 2
    low, high = (centres - halves).min(axis=0), (centres + halves).max(axis=0)
    scale = rng.uniform(*style.scale) * size / (high - low).max()
    offset = rng.uniform(0, size - (high - low) * scale) - low * scale

    subpart, texture = 1, np.zeros((size, size), bool)
    for part_id, (part, centre, half) in enumerate(zip(parts, centres, halves), start=1):
        cx, cy = centre * scale + offset
        a, b = half * scale
        u, v = _box_coords(xs, ys, cx, cy, a, b)
        inside = _inside(part.shape, u, v)
        index = _subpart_index(part.split, u, v, a, b)
        if style.textured:
            texture |= inside & TEXTURES[part.shape](xs.astype(int), ys.astype(int))
        for i in range(SPLIT_SIZES[part.split]):
            mask = inside & (index == i)
            levels[0][mask], levels[1][mask], levels[2][mask] = subpart, part_id, 1
            region_colours[subpart] = _pick_colour(rng, used_colours)
            used_colours.append(region_colours[subpart])
            subpart += 1

    # Colour the image from the label maps, so pixels and labels agree exactly.
    image = background.copy()
    labelled = levels[0] > 0
    image[labelled] = region_colours[levels[0][labelled]]
    if style.background_parts:  # the background's texture (gradient, waves, noise) over its regions' colours
        shown = levels[2] == 0
        image[shown] += (background - background.mean(axis=(0, 1)))[shown]
    object_texture = texture & (levels[2] == 1)  # where the whole is drawn (clutter stays flat)
    image[object_texture] *= TEXTURE_SHADE
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), levels


def make_scene(seed: int, split: str, class_name: str, index: int, image_size: int = 64,
               style: SceneStyle = SceneStyle()):
    """Regenerate one image of a dataset on its own: its generator is seeded by (seed, split, class, index)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), CLASSES.index(class_name), index])
    return render_scene(class_name, rng, image_size, style)


def hierarchy_path(image_path: Path) -> Path:
    """foo/face_0003.png -> foo/face_0003.hierarchy.npy"""
    image_path = Path(image_path)
    return image_path.with_name(image_path.stem + HIERARCHY_SUFFIX)


def load_hierarchy(image_path: Path) -> np.ndarray:
    """Ground-truth label maps of an image: uint8 (3, H, W), levels subpart, part, whole."""
    path = hierarchy_path(image_path)
    if not path.is_file():
        raise FileNotFoundError(f"no hierarchy file {path} for image {image_path}")
    return load_array(path, "hierarchy file", "Delete the generated dataset's folder; it is generated again.",
                      dtype=np.uint8, mmap=False)


def object_points(image_paths, points: np.ndarray) -> np.ndarray:
    """(images, points) bool: whether each prompt point (x, y) of each generated image lies on the whole (level-2 id
    1), not on clutter or background, read from the images' hierarchy files."""
    columns, rows = np.asarray(points, dtype=int).T
    return np.stack([load_hierarchy(path)[2][rows, columns] == 1 for path in image_paths])


def _write_atomically(path: Path, write) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _check_unfinished_root(root: Path) -> None:
    """A root without generator.json may only hold what an interrupted generate() leaves behind."""
    for entry in root.iterdir():
        inner = list(entry.iterdir()) if entry.is_dir() and entry.name in SPLITS else None
        if inner is None or any(sub.name not in CLASSES for sub in inner):
            raise ValueError(
                f"{root} is not empty and holds no generator.json, so it is not a synthetic dataset folder; "
                "delete the folder or choose another one"
            )


def generate(
    root: Path, seed: int = 0, image_size: int = 64, train_per_class: int = 80, val_per_class: int = 30,
    style: SceneStyle = SceneStyle(),
) -> Path:
    """Write the synthetic dataset under root (root/<split>/<class>/<class>_<index:04d>.png + hierarchy files).

    Does nothing when root already holds a complete dataset made with the same arguments; raises ValueError
    when it holds one made with different arguments.
    """
    root = Path(root)
    arguments = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
    } | ({"style": json.loads(json.dumps(asdict(style)))} if style != SceneStyle() else {})
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels for subparts to stay visible, got {image_size}")
    if min(train_per_class, val_per_class) < 1:
        raise ValueError("train_per_class and val_per_class must both be at least 1")

    marker = root / "generator.json"
    if marker.is_file():
        fix = "Delete the folder or choose another one."
        check_settings(root, read_json(marker, "generator record", fix), arguments, "synthetic dataset", fix)
        return root
    if root.exists():
        _check_unfinished_root(root)

    counts = {"train": train_per_class, "val": val_per_class}
    ours = re.compile(r"^(%s)_\d{4,}(\.png|\.hierarchy\.npy)(\.tmp)?$" % "|".join(CLASSES))
    for split, count in counts.items():
        for class_name in CLASSES:
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            names = [f"{class_name}_{index:04d}.png" for index in range(count)]
            # An interrupted run with other arguments may have left extra images; they do not belong here.
            expected = set(names) | {hierarchy_path(folder / n).name for n in names}
            for stale in folder.iterdir():
                if stale.name not in expected and ours.match(stale.name):
                    stale.unlink()
            for index, name in enumerate(names):
                image, hierarchy = make_scene(seed, split, class_name, index, image_size, style)
                _write_atomically(hierarchy_path(folder / name), lambda f: np.save(f, hierarchy))
                _write_atomically(folder / name, lambda f: Image.fromarray(image, "RGB").save(f, format="PNG"))
    _write_atomically(marker, lambda f: f.write(json.dumps(arguments, indent=2).encode()))
    return root


JPEG_MODES = ("RGB", "L", "CMYK")  # Imagenette holds grayscale and CMYK JPEGs among its RGB ones
SIZE_RANGE = (96, 480)  # sides in px, drawn independently: sizes and aspect ratios vary as Imagenette's


def imagenette_like(root: Path, seed: int = 0, train_per_class: int = 3, val_per_class: int = 1) -> Path:
    """A folder in Imagenette's layout (root/<split>/<wnid>/<wnid>_<index>.JPEG) of generated scenes, each a JPEG of
    its own size and mode (RGB, grayscale or CMYK), for rehearsals of the paper profile: the same loading code as
    Imagenette runs on it (any mode to RGB, any size resized). Made once; reused while the arguments match."""
    root = Path(root)
    arguments = {"format_version": FORMAT_VERSION, "kind": "imagenette_like", "seed": seed,
                 "train_per_class": train_per_class, "val_per_class": val_per_class}
    marker = root / "generator.json"
    if marker.is_file():
        fix = "Delete the folder or choose another one."
        check_settings(root, read_json(marker, "generator record", fix), arguments, "generated dataset", fix)
        return root
    for split, count in {"train": train_per_class, "val": val_per_class}.items():
        for wnid, class_name in zip(IMAGENETTE_CLASSES, CLASSES):  # a generated class per wnid folder
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                rng = np.random.default_rng([seed, SPLITS.index(split), CLASSES.index(class_name), index])
                width, height = rng.integers(*SIZE_RANGE, size=2)
                image, _ = render_scene(class_name, rng, image_size=int(max(width, height)))
                picture = Image.fromarray(image).resize((int(width), int(height)), Image.Resampling.BILINEAR)
                picture = picture.convert(JPEG_MODES[rng.integers(len(JPEG_MODES))])
                _write_atomically(folder / f"{wnid}_{index:05d}.JPEG", lambda f: picture.save(f, format="JPEG"))
    _write_atomically(marker, lambda f: f.write(json.dumps(arguments, indent=2).encode()))
    return root
