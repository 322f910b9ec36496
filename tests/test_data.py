import numpy as np
import pytest
from PIL import Image

from partwhole.datasets import data
from partwhole.core import downloads


def _write_folder(root, sizes):
    for split, per_class in sizes.items():
        for name in ("b_class", "a_class"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (10, 6), (i * 20, 0, 0)).save(root / split / name / f"{i}.jpg")


def test_listing_is_sorted_by_class_then_file(tmp_path):
    _write_folder(tmp_path, {"train": 3, "val": 1})
    images = data.list_images(tmp_path, "train")
    assert images.classes == ("a_class", "b_class")
    assert images.relative_paths()[:3] == ["train/a_class/0.jpg", "train/a_class/1.jpg", "train/a_class/2.jpg"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_hidden_entries_are_ignored(tmp_path):
    _write_folder(tmp_path, {"train": 2, "val": 1})
    (tmp_path / "val" / ".ipynb_checkpoints").mkdir()  # a notebook's folder: would be class 0 and shift every label
    (tmp_path / "val" / ".DS_Store").write_text("")
    (tmp_path / "val" / "a_class" / ".hidden.jpg").write_text("")
    train = data.list_images(tmp_path, "train")
    val = data.list_images(tmp_path, "val", train.classes)
    assert val.classes == train.classes and val.labels.tolist() == [0, 1]


@pytest.mark.parametrize("change, message", [
    (lambda root: (root / "val" / "c_class").mkdir(), r"extra \['c_class'\]"),  # a stray folder in val
    (lambda root: [f.unlink() for f in (root / "val" / "a_class").iterdir()] and (root / "val" / "a_class").rmdir(),
     r"missing \['a_class'\]"),  # a class missing from val
])
def test_splits_naming_other_classes_are_refused(tmp_path, change, message):
    _write_folder(tmp_path, {"train": 2, "val": 1})
    change(tmp_path)
    train = data.list_images(tmp_path, "train")
    with pytest.raises(data.DatasetError, match=message):
        data.list_images(tmp_path, "val", train.classes)


def test_anything_but_class_folders_and_images_is_refused_with_its_path(tmp_path):
    _write_folder(tmp_path, {"train": 1})
    (tmp_path / "train" / "readme.txt").write_text("")
    with pytest.raises(data.DatasetError, match="(?s)one folder per class.*readme.txt"):
        data.list_images(tmp_path, "train")
    (tmp_path / "train" / "readme.txt").unlink()
    (tmp_path / "train" / "a_class" / "folder.jpg").mkdir()  # a folder named like an image
    (tmp_path / "train" / "b_class" / "notes.txt").write_text("")
    with pytest.raises(data.DatasetError, match="(?s)image files.*folder.jpg.*notes.txt"):
        data.list_images(tmp_path, "train")


def test_a_class_without_images_is_refused(tmp_path):
    _write_folder(tmp_path, {"train": 1})
    (tmp_path / "train" / "c_class").mkdir()
    with pytest.raises(data.DatasetError, match="(?s)without images.*c_class"):
        data.list_images(tmp_path, "train")


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


def test_image_cache_decodes_once_and_is_reused(tmp_path, monkeypatch):
    _write_folder(tmp_path / "ds", {"train": 2})
    images = data.list_images(tmp_path / "ds", "train")
    kept, first = data.image_cache(images, 8, tmp_path / "cache")
    assert first.shape == (4, 8, 8, 3) and kept.paths == images.paths
    decoded = []
    monkeypatch.setattr(data, "load_image", lambda path, size: decoded.append(path) or np.zeros((size, size, 3)))
    assert np.array_equal(data.image_cache(images, 8, tmp_path / "cache")[1], first) and decoded == []


def test_image_cache_sees_replaced_and_changed_files(tmp_path, capsys):
    _write_folder(tmp_path / "ds", {"train": 2})
    images = data.list_images(tmp_path / "ds", "train")
    path = tmp_path / "ds" / "train" / "a_class" / "1.jpg"
    path.write_bytes(b"truncated")
    with pytest.raises(data.BadImages, match="1.jpg"):
        data.image_cache(images, 8, tmp_path / "cache")
    Image.new("RGB", (10, 6), (0, 250, 0)).save(path)  # replaced under the same name, as the message advises
    _, pixels = data.image_cache(images, 8, tmp_path / "cache")
    assert np.abs(pixels[1].mean(axis=(0, 1)) - [0, 250, 0]).max() < 5  # JPEG's rounding
    Image.new("RGB", (12, 6), (0, 0, 250)).save(path)  # overwritten: new pixels, not the cached ones
    _, pixels = data.image_cache(images, 8, tmp_path / "cache")
    assert np.abs(pixels[1].mean(axis=(0, 1)) - [0, 0, 250]).max() < 5
    assert "1 of 4 images changed" in capsys.readouterr().out


def test_damaged_image_cache_is_decoded_again(tmp_path, capsys):
    _write_folder(tmp_path / "ds", {"train": 2})
    images = data.list_images(tmp_path / "ds", "train")
    first = np.array(data.image_cache(images, 8, tmp_path / "cache")[1])
    cache = tmp_path / "cache" / "images-train-8px.npy"
    cache.write_bytes(cache.read_bytes()[:200])  # truncated
    assert np.array_equal(data.image_cache(images, 8, tmp_path / "cache")[1], first)
    assert f"image cache {cache} is damaged" in capsys.readouterr().out


def test_offline_imagenette_says_what_to_download(monkeypatch):
    import fastai.data.external

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(fastai.data.external, "untar_data", offline)
    with pytest.raises(RuntimeError, match="(?s)imagenette2.tgz.*dataset_path"):
        downloads.imagenette_root(None)


def test_given_folder_must_look_like_imagenette(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an Imagenette folder"):
        downloads.imagenette_root(str(tmp_path))


def test_a_split_without_class_folders_is_refused(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(data.DatasetError, match="no class folders"):
        data.list_images(tmp_path, "train")


def test_a_class_folder_linked_to_another_class_is_refused(tmp_path):
    _write_folder(tmp_path, {"train": 2})
    (tmp_path / "train" / "c_class").symlink_to(tmp_path / "train" / "a_class")  # its images under two labels
    with pytest.raises(data.DatasetError, match="a_class and c_class.*same folder"):
        data.list_images(tmp_path, "train")
    (tmp_path / "train" / "c_class").unlink()
    (tmp_path / "train" / "c_class").mkdir()
    (tmp_path / "train" / "c_class" / "0.jpg").symlink_to(tmp_path / "train" / "a_class" / "0.jpg")
    with pytest.raises(data.DatasetError, match="(?s)two classes.*c_class/0.jpg"):
        data.list_images(tmp_path, "train")


def test_a_class_count_other_than_the_classifier_s_is_refused(tmp_path):
    _write_folder(tmp_path, {"train": 1})
    images = data.list_images(tmp_path, "train")
    data.check_class_count(images, 2)
    with pytest.raises(data.DatasetError, match="2 class folders.*10 outputs"):
        data.check_class_count(images, 10)


def test_skipping_unreadable_images_may_not_empty_a_class(tmp_path):
    _write_folder(tmp_path / "ds", {"train": 2})
    for path in (tmp_path / "ds" / "train" / "b_class").iterdir():
        path.write_bytes(b"truncated")
    images = data.list_images(tmp_path / "ds", "train")
    with pytest.raises(data.BadImages, match=r"\['b_class'\] have no image left"):
        data.image_cache(images, 8, tmp_path / "cache", on_bad_image="skip")
