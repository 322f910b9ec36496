import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partwhole.datasets import synthetic
from partwhole.datasets.synthetic import (
    CLASS_PARTS,
    CLASSES,
    SHARED_PART_PAIRS,
    SPLIT_SIZES,
    generate,
    hierarchy_path,
    load_hierarchy,
    SceneStyle,
    make_scene,
    render_scene,
)

SMALL = dict(train_per_class=2, val_per_class=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout(tmp_path):
    root = generate(tmp_path / "data", seed=0, image_size=64, **SMALL)
    assert root == tmp_path / "data"
    assert len(CLASSES) == 10 and list(CLASSES) == sorted(CLASSES)
    for split, count in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (root / split).iterdir()) == list(CLASSES)
        for class_name in CLASSES:
            images = sorted((root / split / class_name).glob("*.png"))
            assert [p.name for p in images] == [f"{class_name}_{i:04d}.png" for i in range(count)]
            for image_path in images:
                with Image.open(image_path) as image:
                    assert image.mode == "RGB" and image.size == (64, 64)
                hierarchy = load_hierarchy(image_path)
                assert hierarchy.dtype == np.uint8 and hierarchy.shape == (3, 64, 64)
    assert json.loads((root / "generator.json").read_text())["seed"] == 0
    assert not list(root.rglob("*.tmp"))


def test_hierarchy_paths():
    assert hierarchy_path(Path("foo/face_0003.png")) == Path("foo/face_0003.hierarchy.npy")
    with pytest.raises(FileNotFoundError, match="face_0003.hierarchy.npy"):
        load_hierarchy(Path("/nonexistent/face_0003.png"))


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    first = _files(generate(tmp_path / "a", seed=3, **SMALL))
    second = _files(generate(tmp_path / "b", seed=3, **SMALL))
    other = _files(generate(tmp_path / "c", seed=4, **SMALL))
    assert first == second
    pngs = [name for name in first if name.endswith(".png")]
    assert len(pngs) == 30
    assert all(first[name] != other[name] for name in pngs)


def test_one_image_can_be_regenerated_alone(tmp_path):
    root = generate(tmp_path / "data", seed=5, **SMALL)
    image, hierarchy = make_scene(5, "train", "house", 1)
    path = root / "train" / "house" / "house_0001.png"
    assert np.array_equal(np.asarray(Image.open(path)), image)
    assert np.array_equal(load_hierarchy(path), hierarchy)


@pytest.mark.parametrize("image_size", [64, 224])
def test_hierarchy_is_consistent_and_matches_pixels(image_size):
    for class_name in CLASSES:
        n_subparts = sum(SPLIT_SIZES[p.split] for p in CLASS_PARTS[class_name])
        for index in range(4 if image_size == 64 else 1):
            image, levels = make_scene(0, "val", class_name, index, image_size)
            assert image.shape == (image_size, image_size, 3) and image.dtype == np.uint8
            subpart, part, whole = (levels[i].ravel() for i in range(3))

            # Background is 0 at every level, and 0 at any level means background at all of them.
            assert np.array_equal(subpart == 0, part == 0) and np.array_equal(part == 0, whole == 0)
            # Every subpart lies in exactly one part, every part in exactly one whole.
            for child, parent in ((subpart, part), (part, whole)):
                for region in np.unique(child):
                    assert len(np.unique(parent[child == region])) == 1

            # The object: subparts 1..S all visible, parts 1..P, whole 1; clutter above S, same id at all levels.
            object_pixels = subpart <= n_subparts
            assert set(np.unique(subpart[object_pixels])) == set(range(n_subparts + 1))
            assert set(np.unique(part[object_pixels])) == set(range(len(CLASS_PARTS[class_name]) + 1))
            assert set(np.unique(whole[object_pixels])) == {0, 1}
            clutter = ~object_pixels
            assert clutter.any()
            assert np.array_equal(subpart[clutter], part[clutter]) and np.array_equal(part[clutter], whole[clutter])

            # Each labelled region is one flat colour, and the object's subparts are visibly distinct colours.
            pixels = image.reshape(-1, 3).astype(float)
            colours = {}
            for region in np.unique(subpart[subpart > 0]):
                region_pixels = pixels[subpart == region]
                assert (region_pixels == region_pixels[0]).all()
                colours[region] = region_pixels[0]
            object_colours = np.array([colours[i] for i in range(1, n_subparts + 1)])
            distances = np.linalg.norm(object_colours[:, None] - object_colours[None], axis=2)
            assert distances[~np.eye(n_subparts, dtype=bool)].min() >= synthetic.MIN_COLOUR_DISTANCE - 1


def test_every_part_is_split_into_two_to_four_subparts():
    for class_name, parts in CLASS_PARTS.items():
        assert 2 <= len(parts) <= 5, class_name
        assert all(2 <= SPLIT_SIZES[p.split] <= 4 for p in parts), class_name


@pytest.mark.parametrize("pair", SHARED_PART_PAIRS)
def test_paired_classes_share_parts_but_not_arrangement(pair):
    first, second = (CLASS_PARTS[name] for name in pair)

    def bag(parts):
        return Counter((p.shape, p.split, SPLIT_SIZES[p.split], p.w, p.h) for p in parts)

    assert bag(first) == bag(second)
    assert sorted((p.cx, p.cy) for p in first) != sorted((p.cx, p.cy) for p in second)


def test_pairs_cover_the_face_and_tower_arrangements():
    assert set(SHARED_PART_PAIRS) == {("face", "scrambled_face"), ("row", "tower")}

    def part_centroids(class_name):
        _, levels = make_scene(0, "train", class_name, 0)
        ys, xs = np.mgrid[: levels.shape[1], : levels.shape[2]]
        return {p: (xs[levels[1] == p].mean(), ys[levels[1] == p].mean()) for p in (1, 2, 3)}

    # Parts 1 and 2 are the eyes, part 3 the mouth: below the eyes in a face, above them when scrambled.
    face, scrambled = part_centroids("face"), part_centroids("scrambled_face")
    assert face[3][1] > max(face[1][1], face[2][1])
    assert scrambled[3][1] < min(scrambled[1][1], scrambled[2][1])
    # A tower stacks its parts vertically, a row lays them out horizontally.
    tower, row = part_centroids("tower"), part_centroids("row")
    assert np.ptp([c[1] for c in tower.values()]) > 2 * np.ptp([c[0] for c in tower.values()])
    assert np.ptp([c[0] for c in row.values()]) > 2 * np.ptp([c[1] for c in row.values()])


def test_regenerating_a_complete_root_is_a_no_op(tmp_path):
    root = generate(tmp_path / "data", seed=0, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate(root, seed=0, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


@pytest.mark.parametrize(
    "changed", [{"seed": 1}, {"image_size": 32}, {"train_per_class": 3}, {"val_per_class": 2}]
)
def test_root_with_other_arguments_is_refused(tmp_path, changed):
    root = generate(tmp_path / "data", seed=0, **SMALL)
    arguments = {"seed": 0, **SMALL, **changed}
    argument = next(iter(changed))
    with pytest.raises(ValueError, match=argument) as error:
        generate(root, **arguments)
    assert str(root) in str(error.value) and "Delete the folder" in str(error.value)


def test_interrupted_run_is_completed_and_foreign_folder_refused(tmp_path):
    reference = _files(generate(tmp_path / "reference", seed=2, **SMALL))

    root = generate(tmp_path / "data", seed=2, train_per_class=3, val_per_class=1)
    # Simulate an interrupted run: no generator.json, a missing image and a leftover temporary file.
    (root / "generator.json").unlink()
    (root / "train" / "car" / "car_0000.png").unlink()
    (root / "train" / "car" / "car_0000.png.tmp").write_bytes(b"half")
    generate(root, seed=2, **SMALL)
    assert _files(root) == reference  # the stale car_0002 files from the bigger run are gone too

    foreign = tmp_path / "imagenette"
    (foreign / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(ValueError, match="generator.json"):
        generate(foreign, **SMALL)


EMBEDDED_STYLE = SceneStyle(scale=(0.5, 0.85), clutter=(2, 5), split_clutter=True, textured=True,
                            background_parts=True)


@pytest.mark.parametrize("class_name", CLASSES)
def test_the_embedded_style_keeps_a_strict_hierarchy_with_levels_that_differ(class_name):
    """Split clutter and a background of parts keep every subpart in one part and every part in one whole, and make
    a point's subpart and whole differ almost everywhere; textures mark the object's subparts only."""
    rng = np.random.default_rng(0)
    image, levels = render_scene(class_name, rng, 64, EMBEDDED_STYLE)
    subpart, part, whole = levels
    for child, parent in ((subpart, part), (part, whole)):
        for region in np.unique(child):
            assert len(np.unique(parent[child == region])) == 1
    assert (subpart != whole).mean() > 0.9  # the flat default style has subpart == whole on all background
    plain_image, plain = render_scene(class_name, np.random.default_rng(0), 64)
    assert (plain[0] != plain[2]).mean() < (subpart != whole).mean()
    background = whole == 0
    assert len(np.unique(part[background])) > 1 and len(np.unique(subpart[background])) > len(np.unique(part[background]))
    textured = render_scene(class_name, np.random.default_rng(0), 64, SceneStyle(textured=True))[0]
    changed = (textured != plain_image).any(axis=-1)
    assert changed.any() and not changed[plain[2] != 1].any()  # only the whole's pixels get a texture
