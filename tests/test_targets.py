import dataclasses

import numpy as np
import pytest
import torch

from partwhole.datasets import synthetic
from partwhole.datasets.data import image_cache, list_images
from partwhole.study.profiles import get_profile
from partwhole.method.embedder import MaskEmbedder, distinct_masks, embed_masks, masked_image
from partwhole.core.artefacts import DamagedFile
from partwhole.method.targets import build_targets, load_targets, manifest, targets_path
from partwhole.method.teachers import make_teacher


def test_masking_without_and_with_crop_on_a_hand_made_mask():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3) + 1
    mask = np.zeros((5, 6), dtype=bool)
    mask[1:3, 2:5] = True
    mask[2, 2] = False  # not a rectangle: the crop is the bounding box, pixels outside the mask stay black
    full = np.asarray(masked_image(image, mask, "none"))
    assert full.shape == (5, 6, 3)
    assert np.array_equal(full[mask], image[mask]) and not full[~mask].any()
    cropped = np.asarray(masked_image(image, mask, "bbox"))
    assert np.array_equal(cropped, full[1:3, 2:5])
    empty = np.zeros((5, 6), dtype=bool)
    assert np.asarray(masked_image(image, empty, "bbox")).shape == (5, 6, 3)  # an empty mask is embedded as is
    with pytest.raises(ValueError, match="crop mode"):
        masked_image(image, mask, "tight")


class RecordingEmbedder:
    """Stands in for a timm model: the mean colour of each masked image (through the reference `masked_image`),
    and a count of images embedded."""

    dim, device = 3, "cpu"

    def __init__(self):
        self.seen = 0

    def embed(self, images, masks, owner, crop):
        self.seen += len(masks)
        return torch.stack([self.mean_colour(masked_image(images[b].numpy(), m.numpy(), crop)) for b, m in zip(owner, masks)])

    @staticmethod
    def mean_colour(image):
        return torch.tensor(np.asarray(image, dtype=np.float32).mean(axis=(0, 1)))


def test_identical_masks_of_an_image_are_embedded_once_with_the_same_result():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:4] = True
    first = torch.stack([torch.stack([region, region, ~region])] * 5)  # 5 points x 3 levels, 2 distinct masks
    second = first.clone()
    second[0, 0] = region.T  # a third: the second image has 3 distinct masks, two of them the first image's
    masks = torch.stack([first, second])
    embedder = RecordingEmbedder()
    out = embed_masks(torch.from_numpy(images), distinct_masks(masks), embedder, ("none", "bbox"))
    assert embedder.seen == (2 + 3) * 2  # distinct masks per image, two strategies
    for crop in ("none", "bbox"):
        assert out[crop].shape == (2, 5, 3, 3)
        for b in range(2):
            expected = [RecordingEmbedder.mean_colour(masked_image(images[b], m.numpy(), crop)) for m in masks[b].flatten(0, 1)]
            assert torch.allclose(out[crop][b].flatten(0, 1), torch.stack(expected))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("scenes"), seed=0, image_size=32, train_per_class=1, val_per_class=1)
    profile = get_profile("embedded", image_size=32, grid=4,
                          embedder_data_config={"input_size": (3, 32, 32), "crop_pct": 1.0})
    return profile, list_images(root, "train")


def test_targets_have_one_vector_per_point_and_level(tiny_dataset, tmp_path):
    profile, images = tiny_dataset
    images, pixels = image_cache(images, profile.image_size, tmp_path / "cache")
    embedder = MaskEmbedder.from_profile(profile, "cpu")
    manifests = build_targets(profile, images, pixels, make_teacher(profile, "cpu"), embedder, tmp_path, chunk_size=3)
    for crop, expected in manifests.items():
        targets = load_targets(tmp_path, expected)
        assert targets.shape == (len(images), 16, 3, embedder.dim) and targets.dtype == np.float16
        assert expected["crop"] == crop and expected["paths"] == images.relative_paths()
    assert not (tmp_path / "chunks-train").exists()  # chunks are merged and removed


def test_targets_of_another_configuration_are_refused(tiny_dataset, tmp_path):
    profile, images = tiny_dataset
    images, pixels = image_cache(images, profile.image_size, tmp_path / "cache")
    embedder = MaskEmbedder.from_profile(profile, "cpu")
    build_targets(profile, images, pixels, make_teacher(profile, "cpu"), embedder, tmp_path, crops=("none",))
    expected = manifest(profile, images, "none", embedder.dim, embedder.data_config)
    load_targets(tmp_path, expected)
    for field, value in [("grid", 2), ("paths", expected["paths"][::-1]), ("image_size", 64),
                         ("dataset", "synthetic-seed7-32px-1x1")]:  # same file names, scenes of another seed
        with pytest.raises(ValueError, match=f"{field}: stored"):
            load_targets(tmp_path, expected | {field: value})
    with pytest.raises(ValueError, match="embedder"):
        load_targets(tmp_path, expected | {"embedder": expected["embedder"] | {"name": "other"}})
    with pytest.raises(FileNotFoundError, match="build them first"):
        load_targets(tmp_path, expected | {"crop": "bbox"})


def test_a_randomly_initialised_embedder_is_the_same_in_every_run(tiny_dataset):
    profile = dataclasses.replace(tiny_dataset[0], embedder_weights=None)  # timm's random weights, from embedder_seed
    weights = lambda embedder: torch.cat([p.flatten() for p in embedder.model.parameters()])  # noqa: E731
    first, again = (weights(MaskEmbedder.from_profile(profile, "cpu")) for _ in range(2))
    other = weights(MaskEmbedder.from_profile(dataclasses.replace(profile, embedder_seed=7), "cpu"))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_targets_holding_nan_are_refused_at_build_and_at_load(tiny_dataset, tmp_path, monkeypatch):
    profile, images = tiny_dataset
    images, pixels = image_cache(images, profile.image_size, tmp_path / "cache")
    embedder, teacher = MaskEmbedder.from_profile(profile, "cpu"), make_teacher(profile, "cpu")
    manifests = build_targets(profile, images, pixels, teacher, embedder, tmp_path / "good", crops=("none",))
    stored = np.load(targets_path(tmp_path / "good", "train", "none"), mmap_mode="r+")
    stored[1, 2, 0, 0] = np.nan  # a file damaged after it was written
    stored.flush()
    del stored
    with pytest.raises(DamagedFile, match=r"hold NaN or infinity \(image 1"):
        load_targets(tmp_path / "good", manifests["none"])

    from partwhole.method import targets as targets_module
    real = targets_module.embed_masks
    monkeypatch.setattr(targets_module, "embed_masks", lambda *args: {crop: value.fill_(float("nan"))
                                                                     for crop, value in real(*args).items()})
    with pytest.raises(ValueError, match="the embedder gave NaN or infinity"):
        build_targets(profile, images, pixels, teacher, embedder, tmp_path / "bad", crops=("none",))
    assert not list((tmp_path / "bad").rglob("*.npy"))  # nothing was written
