"""Every artefact the study reads back names its file when it is damaged or does not hold what its manifest says,
and says how to rebuild it."""

import numpy as np
import pytest
import torch

from partwhole.core.artefacts import DamagedFile, load_array, load_torch, read_json, write_json
from partwhole.method.model import Agglomerator, AgglomeratorConfig
from partwhole.study.profiles import get_profile
from partwhole.method.targets import CachedMasks, load_targets, mask_cache_dir, targets_path
from partwhole.method.train import fit, load_checkpoint, pretraining_learner, save_checkpoint

DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: b"\x00not what it should be\xff" * 8,
}


def damage(path, how):
    path.write_bytes(DAMAGES[how](path.read_bytes()))


def assert_names(error, path, *fix_words):
    message = str(error.value)
    assert str(path) in message, message
    assert any(word in message for word in fix_words), message


@pytest.mark.parametrize("how", DAMAGES)
def test_generic_readers_name_the_file_and_the_fix(tmp_path, how):
    json_file, array_file, torch_file = tmp_path / "m.json", tmp_path / "a.npy", tmp_path / "t.pt"
    write_json(json_file, {"a": 1})
    np.save(array_file, np.zeros((4, 3), np.float16))
    torch.save({"w": torch.zeros(3)}, torch_file)
    for path, read in ((json_file, lambda p: read_json(p, "a manifest", "Rebuild it.")),
                       (array_file, lambda p: load_array(p, "targets", "Rebuild it.", shape=(4, 3), dtype=np.float16)),
                       (torch_file, lambda p: load_torch(p, "checkpoint", "Rebuild it."))):
        damage(path, how)
        with pytest.raises(DamagedFile) as error:
            read(path)
        assert_names(error, path, "Rebuild it.")


def test_an_array_of_another_shape_or_type_than_its_manifest_is_refused(tmp_path):
    path = tmp_path / "targets.npy"
    np.save(path, np.zeros((3, 4, 3, 8), np.float16))  # 3 images where the manifest lists 4
    with pytest.raises(DamagedFile) as error:
        load_array(path, "targets", "Rebuild them.", shape=(4, 4, 3, 8), dtype=np.float16)
    assert_names(error, path, "Rebuild them.")
    np.save(path, np.zeros((4, 4, 3, 8), np.float32))
    with pytest.raises(DamagedFile):
        load_array(path, "targets", "Rebuild them.", shape=(4, 4, 3, 8), dtype=np.float16)


def targets_on_disk(tmp_path, n_images=4):
    expected = {"split": "train", "crop": "none", "paths": [f"a/{i}.png" for i in range(4)], "grid": 2, "levels": 3,
                "dim": 8}
    path = targets_path(tmp_path, "train", "none")
    np.save(path, np.zeros((n_images, 4, 3, 8), np.float16))
    write_json(path.with_suffix(".json"), expected)
    return path, expected


@pytest.mark.parametrize("how", ["truncated", "garbage", "fewer images", "manifest"])
def test_damaged_targets_are_refused_naming_the_file_and_notebook_02(tmp_path, how):
    path, expected = targets_on_disk(tmp_path, n_images=3 if how == "fewer images" else 4)
    if how == "manifest":
        damage(path.with_suffix(".json"), "truncated")
        path = path.with_suffix(".json")
    elif how != "fewer images":
        damage(path, how)
    with pytest.raises(DamagedFile) as error:
        load_targets(tmp_path, expected)
    assert_names(error, path, "notebook 02", "Delete")


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_checkpoint_is_refused_naming_it(tmp_path, how):
    cfg = AgglomeratorConfig(image_size=32, grid=4, patch_dim=32, target_dim=32)
    path = tmp_path / "pretrained.pt"
    save_checkpoint(Agglomerator(cfg), cfg, path)
    damage(path, how)
    with pytest.raises(DamagedFile) as error:
        load_checkpoint(Agglomerator(cfg), cfg, path)
    assert_names(error, path, "Run the notebook that trains it again")


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_a_damaged_training_state_is_refused_naming_it(tmp_path, how):
    profile = get_profile("embedded", image_size=32, grid=4, patch_dim=32, batch_size=4, pretrain_epochs=1)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(8, 16, 3, 32)).astype(np.float16)
    state = tmp_path / "state.pt"

    def run():
        learn = pretraining_learner(profile, pixels, targets, np.arange(6), np.arange(6, 8), "cpu")
        with learn.no_bar(), learn.no_logging():
            return fit(learn, profile, 1, state)

    run()
    damage(state, how)
    with pytest.raises(DamagedFile) as error:
        run()
    assert_names(error, state, "Delete it")


def test_a_damaged_mask_cache_is_refused_naming_its_folder(tmp_path):
    from partwhole.datasets.data import ImageSet

    images = ImageSet(root=tmp_path, split="train", classes=("a",), paths=[tmp_path / "x.png"], labels=np.zeros(1, int))
    folder = mask_cache_dir(tmp_path, "train")
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(DamagedFile) as error:
        CachedMasks(tmp_path, get_profile("paper"), images)
    assert_names(error, folder / "manifest.json", "Delete that folder")


def under_file_size_limit(body, *args):
    """Runs body(*args) in a forked child whose files may grow to 16 KiB (ulimit -f), going beyond being an OSError
    (EFBIG) rather than the signal that would kill it: what a full disk looks like to the writer, without a small
    file system. Only the child is limited: the test runner's own output may be a log file already beyond 16 KiB."""
    import multiprocessing
    import resource
    import signal

    def child(sender):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            body(*args)
            sender.send(None)
        except BaseException as error:  # pytest's failures are BaseExceptions too
            sender.send(f"{type(error).__name__}: {error}")

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=child, args=(sender,))
    process.start()
    failure = receiver.recv() if receiver.poll(300) else "the child sent nothing in 300 s"
    process.join()
    assert failure is None and process.exitcode == 0, f"{failure} (exit code {process.exitcode})"


def test_a_write_beyond_the_space_names_the_file_and_leaves_nothing_behind(tmp_path):
    under_file_size_limit(writes_beyond_the_space, tmp_path)


def writes_beyond_the_space(tmp_path):
    from PIL import Image

    from partwhole.datasets import data
    from partwhole.core.artefacts import NoSpace

    with pytest.raises(NoSpace) as error:
        write_json(tmp_path / "metrics" / "big.json", list(range(10_000)))
    assert_names(error, tmp_path / "metrics" / "big.json", "free space on", "ulimit -f")
    for name in ("a", "b"):  # the image cache: 8 images of 48 x 48 px, 55 KiB, memory-mapped
        (tmp_path / "ds" / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (48, 48), (i * 50, 0, 0)).save(tmp_path / "ds" / "train" / name / f"{i}.png")
    images = data.list_images(tmp_path / "ds", "train")
    with pytest.raises(NoSpace) as error:  # a sparse memory map would die of SIGBUS on a full disk instead
        data.image_cache(images, 48, tmp_path / "cache")
    assert_names(error, tmp_path / "cache" / "images-train-48px.npy", "free space on")
    assert list((tmp_path / "cache").iterdir()) == [] and not list((tmp_path / "metrics").iterdir())


def test_figures_are_written_through_the_same_place(tmp_path):
    under_file_size_limit(writes_a_figure_beyond_the_space, tmp_path)


def writes_a_figure_beyond_the_space(tmp_path):
    import matplotlib.pyplot as plt

    from partwhole.core.artefacts import NoSpace
    from partwhole.study.study import Study

    study = Study.__new__(Study)  # only its results folder is needed
    study.results_dir = tmp_path
    fig, ax = plt.subplots(figsize=(20, 20))
    ax.imshow(np.random.default_rng(0).random((500, 500, 3)))  # noise: a PNG far beyond 16 KiB
    with pytest.raises(NoSpace, match="figures/noise.png"):
        study.save_figure(fig, "noise")
    assert list((tmp_path / "figures").iterdir()) == []
    plt.close(fig)


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB file system (tmpfs), where the system lets this user mount one; skipped elsewhere."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_the_image_cache_on_a_full_disk_is_an_error_naming_it_not_a_bus_error(tmp_path, small_disk):
    from PIL import Image

    from partwhole.datasets import data
    from partwhole.core.artefacts import NoSpace

    for name in ("a", "b"):  # 8 images of 160 x 160 px: a 600 KiB cache
        (tmp_path / "ds" / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (160, 160), (i * 50, 0, 0)).save(tmp_path / "ds" / "train" / name / f"{i}.png")
    images = data.list_images(tmp_path / "ds", "train")
    with pytest.raises(NoSpace) as error:  # written through a sparse memory map, the process would die of SIGBUS
        data.image_cache(images, 160, small_disk / "cache")
    assert_names(error, small_disk / "cache" / "images-train-160px.npy", "free space on")
    assert list((small_disk / "cache").iterdir()) == []


def test_a_truncated_target_chunk_is_named(tmp_path):
    from partwhole.method import targets

    chunks = tmp_path / "chunks-train"
    chunks.mkdir()
    for start in (0, 2):
        np.savez(chunks / f"{start:07d}.npz", none=np.ones((2, 4, 3, 8), np.float16))
    damage(chunks / "0000002.npz", "truncated")
    expected = {"split": "train", "crop": "none"}
    with pytest.raises(DamagedFile) as error:  # zipfile's BadZipFile, named
        targets._assemble(tmp_path, chunks, range(0, 4, 2), "none", expected, 4, (4, 3, 8))
    assert_names(error, chunks / "0000002.npz", "only its images are redone")
    assert not targets_path(tmp_path, "train", "none").exists()
