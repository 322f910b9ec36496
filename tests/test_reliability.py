"""Bad inputs, interrupted runs and exhausted resources: each case provoked, and its outcome checked."""
import errno
import json

import numpy as np
import pytest
import torch
from PIL import Image

from partwhole.datasets import synthetic
from partwhole.method import targets as targets_module, train
from partwhole.datasets.data import BadImages, image_cache, list_images
from partwhole.core.devices import HalvingBatches
from partwhole.method.embedder import MaskEmbedder
from partwhole.study.profiles import get_profile
from partwhole.method.targets import build_targets, targets_path
from partwhole.method.teachers import make_teacher

BAD = {"truncated.jpg", "empty.jpg", "text.png"}


@pytest.fixture
def awkward_folder(tmp_path):
    folder = tmp_path / "ds" / "train" / "things"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / "whole.jpg")
    (folder / "truncated.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:300])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image at all")
    Image.new("L", (30, 20), 90).save(folder / "gray.png")
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (30, 20), (0, 0, 255, 128)).save(folder / "rgba.png")
    Image.new("P", (30, 20), 3).save(folder / "palette.png")
    Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16)).save(folder / "sixteen_bit.png")
    Image.new("RGB", (1, 1), (0, 255, 0)).save(folder / "one_pixel.png")
    Image.new("RGB", (8000, 6000), (10, 10, 200)).save(folder / "huge.jpg", quality=50)
    # a photo stored sideways: left half red, right half blue, with EXIF orientation 6 (rotate 90 degrees clockwise)
    sideways = np.zeros((20, 40, 3), np.uint8)
    sideways[:, :20] = (255, 0, 0)
    sideways[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(sideways).save(folder / "rotated.jpg", exif=exif, quality=95)
    return tmp_path / "ds"


def test_unreadable_images_stop_the_run_with_every_file_and_reason(awkward_folder, tmp_path):
    images = list_images(awkward_folder, "train")
    with pytest.raises(BadImages) as caught:
        image_cache(images, 16, tmp_path / "cache")
    message = str(caught.value)
    for name in BAD:
        assert f"train/things/{name}" in message
    assert "on_bad_image='skip'" in message
    report = json.loads((tmp_path / "cache" / "images-train-16px.json").read_text())
    assert {r["path"].split("/")[-1] for r in report["refused"]} == BAD
    assert all(r["reason"] for r in report["refused"])


def test_skipping_bad_images_keeps_every_valid_one_converted(awkward_folder, tmp_path):
    images = list_images(awkward_folder, "train")
    kept, pixels = image_cache(images, 16, tmp_path / "cache", on_bad_image="skip")
    names = [p.name for p in kept.paths]
    assert set(names) == {p.name for p in images.paths} - BAD
    assert pixels.shape == (len(names), 16, 16, 3) and pixels.dtype == np.uint8
    by_name = {name: image.astype(int) for name, image in zip(names, pixels)}
    assert by_name["sixteen_bit.png"].min() == 255  # 16-bit white is scaled, not clipped
    assert tuple(by_name["cmyk.jpg"][8, 8]) == pytest.approx((255, 0, 0), abs=8)
    assert tuple(by_name["huge.jpg"][8, 8]) == pytest.approx((10, 10, 200), abs=8)
    rotated = by_name["rotated.jpg"]  # upright now: red on top, blue below
    assert rotated[2, 8, 0] > 200 and rotated[13, 8, 2] > 200


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("scenes"), seed=0, image_size=32, train_per_class=1, val_per_class=1)
    profile = get_profile("embedded", image_size=32, grid=4,
                          embedder_data_config={"input_size": (3, 32, 32), "crop_pct": 1.0})
    images, pixels = image_cache(list_images(root, "train"), 32, tmp_path_factory.mktemp("cache"))
    return profile, images, pixels, MaskEmbedder.from_profile(profile, "cpu")


class CountingTeacher:
    """The real teacher, counting its calls, and able to 'crash' before a given call."""

    def __init__(self, teacher, crash_at=None):
        self.teacher, self.crash_at, self.calls = teacher, crash_at, 0

    def __call__(self, image, path):
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.teacher(image, path)


def test_killed_target_build_resumes_without_redoing_finished_chunks(scenes, tmp_path):
    profile, images, pixels, embedder = scenes
    teacher = make_teacher(profile, "cpu")
    build_targets(profile, images, pixels, CountingTeacher(teacher), embedder, tmp_path / "straight", chunk_size=3)

    with pytest.raises(KeyboardInterrupt):
        build_targets(profile, images, pixels, CountingTeacher(teacher, crash_at=7), embedder, tmp_path / "killed", chunk_size=3)
    assert not targets_path(tmp_path / "killed", "train", "none").exists()  # nothing looks complete
    resumed = CountingTeacher(teacher)
    build_targets(profile, images, pixels, resumed, embedder, tmp_path / "killed", chunk_size=3)
    assert resumed.calls == len(images) - 6  # the two complete chunks of 3 images are not redone
    for crop in ("none", "bbox"):
        straight = targets_path(tmp_path / "straight", "train", crop).read_bytes()
        assert targets_path(tmp_path / "killed", "train", crop).read_bytes() == straight


def test_full_disk_stops_with_a_message_and_leaves_no_half_file(scenes, tmp_path, monkeypatch):
    profile, images, pixels, embedder = scenes

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(targets_module.np, "savez", full_disk)
    with pytest.raises(OSError, match="disk full while writing .*0000000.npz"):
        build_targets(profile, images, pixels, make_teacher(profile, "cpu"), embedder, tmp_path, chunk_size=4)
    assert not list((tmp_path / "chunks-train").glob("*.npz*"))


def test_out_of_memory_halves_the_batch_and_says_so():
    seen = []

    def run(start, stop):
        if stop - start > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        seen.append((start, stop))
        return list(range(start, stop))

    batches = HalvingBatches(8, "a test")
    with pytest.warns(UserWarning, match="batch size halved to 2"):
        out = batches.map(run, 7)
    assert sum(out, []) == list(range(7)) and batches.size == 2
    assert seen == [(0, 2), (2, 4), (4, 6), (6, 7)]


def _tiny_pretraining(epochs=3, **fields):
    """A tiny pretraining's profile, images and targets."""
    profile = get_profile("embedded", image_size=32, grid=4, patch_dim=32, batch_size=8, pretrain_epochs=epochs,
                          **fields)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(24, 16, 3, 32)).astype(np.float16)
    return profile, pixels, targets


def _pretrain(tmp_path, checkpoint=None, epochs=3, **fields):
    profile, pixels, targets = _tiny_pretraining(epochs, **fields)
    learn, history = train.pretrain(profile, pixels, targets, np.arange(16), np.arange(16, 24), "cpu", checkpoint)
    return learn.model.state_dict(), history


def test_a_resumed_pretraining_puts_its_optimiser_state_where_the_model_trains(tmp_path):
    """Resumed on a GPU, the saved optimiser state (Lion's momentum) must go to the GPU with the model, or the
    first step fails; the meta device stands in for the GPU on any machine."""
    checkpoint = tmp_path / "pretrain.pt"
    _pretrain(tmp_path, checkpoint, epochs=2)
    profile, pixels, targets = _tiny_pretraining(epochs=2)
    learn = train.pretraining_learner(profile, pixels, targets, np.arange(16), np.arange(16, 24), "meta")
    train._resume(learn, checkpoint, profile.pretraining_settings() | {"epochs": 2})
    momenta = [value for state in learn.opt.state_dict()["state"].values() for value in state.values()
               if isinstance(value, torch.Tensor)]
    assert momenta and {value.device.type for value in momenta} == {"meta"}
    assert {p.device.type for p in learn.model.parameters()} == {"meta"}


def test_same_seed_same_training(tmp_path):
    first, history = _pretrain(tmp_path)
    second, again = _pretrain(tmp_path)
    assert history == again
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_killed_pretraining_resumes_after_its_last_epoch_and_ends_the_same(tmp_path, monkeypatch):
    straight, history = _pretrain(tmp_path)

    save_epoch = train.EpochHistory.after_epoch

    def killed_after_epoch_1(self):
        save_epoch(self)
        if self.epoch == 1:
            raise KeyboardInterrupt("killed")

    checkpoint = tmp_path / "pretrain.pt"
    with monkeypatch.context() as patch:
        patch.setattr(train.EpochHistory, "after_epoch", killed_after_epoch_1)
        with pytest.raises(KeyboardInterrupt):
            _pretrain(tmp_path, checkpoint)
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1
    resumed, resumed_history = _pretrain(tmp_path, checkpoint)
    assert resumed_history == history
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_training_out_of_memory_says_which_batch_size_to_try(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train.Learner, "fit_one_cycle", out_of_memory)
    with pytest.raises(RuntimeError, match="batch_size=8: run again with --set batch_size=4"):
        _pretrain(tmp_path)


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    checkpoint = tmp_path / "pretrain.pt"
    _pretrain(tmp_path, checkpoint, epochs=2)
    with pytest.raises(ValueError, match="other settings .*epochs"):
        _pretrain(tmp_path, checkpoint, epochs=3)


def test_a_finished_pretraining_is_reused_when_only_other_steps_settings_changed(tmp_path, monkeypatch):
    checkpoint = tmp_path / "pretrain.pt"
    trained, history = _pretrain(tmp_path, checkpoint, epochs=2)
    monkeypatch.setattr(train.Distiller, "forward", lambda *a: pytest.fail("trained again"))
    reused, again = _pretrain(tmp_path, checkpoint, epochs=2, probe_epochs=3, probe_lr=1e-2, teacher_batch=7,
                              xresnet_epochs=2, contrastive_epochs=1, device="cpu")
    assert again == history and all(torch.equal(trained[k], reused[k]) for k in trained)
