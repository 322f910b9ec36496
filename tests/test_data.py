import numpy as np
import pytest
from PIL import Image

from partwhole import data


def _write_folder(root, sizes):
    for split, per_class in sizes.items():
        for name in ("b_class", "a_class"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (10, 6), (i * 20, 0, 0)).save(root / split / name / f"{i}.jpg")


def test_listing_is_sorted_by_class_then_file(tmp_path):
    _write_folder(tmp_path, {"train": 3, "val": 1})
    (tmp_path / "train" / "a_class" / "notes.txt").write_text("not an image")
    images = data.list_images(tmp_path, "train")
    assert images.classes == ("a_class", "b_class")
    assert images.relative_paths()[:3] == ["train/a_class/0.jpg", "train/a_class/1.jpg", "train/a_class/2.jpg"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_missing_split_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "val")):
        data.list_images(tmp_path, "val")


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_any_image_mode_becomes_rgb_resized_without_crop(tmp_path, mode):
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    Image.new(mode, (40, 20)).save(path)
    pixels = data.load_image(path, 16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        data.load_image(path, 16)


def test_holdout_is_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 10)
    fit, holdout = data.holdout_split(labels, 0.2, seed=0)
    assert len(holdout) == 8 and np.bincount(labels[holdout]).tolist() == [2, 2, 2, 2]
    assert sorted(np.concatenate([fit, holdout]).tolist()) == list(range(40))
    again, _ = data.holdout_split(labels, 0.2, seed=0)
    other, _ = data.holdout_split(labels, 0.2, seed=1)
    assert np.array_equal(fit, again) and not np.array_equal(fit, other)


def test_image_cache_decodes_once_and_is_reused(tmp_path):
    _write_folder(tmp_path / "ds", {"train": 2})
    images = data.list_images(tmp_path / "ds", "train")
    kept, first = data.image_cache(images, 8, tmp_path / "cache")
    assert first.shape == (4, 8, 8, 3) and kept.paths == images.paths
    (tmp_path / "ds" / "train" / "a_class" / "0.jpg").unlink()  # a cached file is not decoded again
    assert np.array_equal(data.image_cache(images, 8, tmp_path / "cache")[1], first)


def test_offline_imagenette_says_what_to_download(monkeypatch):
    import fastai.data.external

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(fastai.data.external, "untar_data", offline)
    with pytest.raises(RuntimeError, match="(?s)imagenette2.tgz.*dataset_path"):
        data.imagenette_root(None)


def test_given_folder_must_look_like_imagenette(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an Imagenette folder"):
        data.imagenette_root(str(tmp_path))
