"""Tests for partwhole.teacher: point grid, level order, ground-truth and SAM teachers, checkpoints.

SAM runs as a tiny randomly initialised model (no weights can be downloaded here); no test touches
the network.
"""

import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from partwhole.core.downloads import SAM_CHECKPOINTS, SamCheckpoint, sam_checkpoint
from partwhole.study.profiles import get_profile
from partwhole.method.prompts import LEVELS, order_levels, point_grid
from partwhole.method.sam import SamTeacher, build_sam, build_tiny_sam
from partwhole.method.teachers import GroundTruthTeacher

# ---------------------------------------------------------------------------------------- point_grid


def test_point_grid_224_14_paper_layout():
    pts = point_grid(224, 14)
    assert pts.shape == (196, 2) and pts.dtype == np.float32
    centres = set(range(8, 224, 16))
    assert set(pts[:, 0].tolist()) == centres and set(pts[:, 1].tolist()) == centres
    # Row-major: point i = row * 14 + col, x from col, y from row.
    assert pts[0].tolist() == [8, 8]
    assert pts[1].tolist() == [24, 8]
    assert pts[14].tolist() == [8, 24]
    assert pts[195].tolist() == [216, 216]


def test_point_grid_64_8():
    pts = point_grid(64, 8)
    assert pts.shape == (64, 2)
    assert pts[:8, 0].tolist() == [4, 12, 20, 28, 36, 44, 52, 60]
    assert (pts[:8, 1] == 4).all() and pts[8].tolist() == [4, 12]


def test_point_grid_not_divisible():
    with pytest.raises(ValueError, match="divisible"):
        point_grid(224, 15)


# -------------------------------------------------------------------------------------- order_levels


def _square_masks(sides_per_point, size=8):
    """(P, 3, size, size) masks, each a top-left square of the given side."""
    masks = torch.zeros(len(sides_per_point), LEVELS, size, size, dtype=torch.bool)
    for p, sides in enumerate(sides_per_point):
        for l, s in enumerate(sides):
            masks[p, l, :s, :s] = True
    return masks


def test_order_levels_area_sorts_each_point():
    sides = [(5, 2, 7), (7, 5, 2), (2, 5, 7), (3, 3, 1)]
    out = order_levels(_square_masks(sides), "area")
    assert out.dtype == torch.bool
    assert torch.equal(out, _square_masks([sorted(s) for s in sides]))


def test_order_levels_area_is_stable():
    masks = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    masks[0, 0, 0, :2] = True  # area 2, top row
    masks[0, 1, 3, :2] = True  # area 2, bottom row: tie, must stay after mask 0
    masks[0, 2, 0, 0] = True  # area 1
    out = order_levels(masks, "area")
    assert torch.equal(out[0], masks[0, [2, 0, 1]])


def test_order_levels_sam_keeps_order_and_bad_name_raises():
    masks = _square_masks([(5, 2, 7)])
    assert torch.equal(order_levels(masks, "sam"), masks)
    with pytest.raises(ValueError, match="area.*sam"):
        order_levels(masks, "size")


# ----------------------------------------------------------------------------------- GroundTruthTeacher


def _toy_hierarchy():
    """16 x 16 scene, grid 4 (points at 2, 6, 10, 14).

    Whole: square rows/cols 0-11 (id 1); background id 0.
    Parts: left (cols 0-5, id 1), right (cols 6-11, id 2).
    Subparts: left-top (rows 0-5, id 1), left-bottom (rows 6-11, id 2), right part is one subpart (id 3).
    """
    h = np.zeros((3, 16, 16), np.uint8)
    h[2, :12, :12] = 1
    h[1, :12, :6] = 1
    h[1, :12, 6:12] = 2
    h[0, :6, :6] = 1
    h[0, 6:12, :6] = 2
    h[0, :12, 6:12] = 3
    return h


def _region(rows, cols, size=16):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[rows, cols] = True
    return m


def test_ground_truth_teacher(tmp_path):
    image_path = tmp_path / "scene_0000.png"  # the image itself is never read
    np.save(tmp_path / "scene_0000.hierarchy.npy", _toy_hierarchy())
    image = np.zeros((16, 16, 3), np.uint8)

    masks = GroundTruthTeacher(16, 4)(image, image_path)
    assert masks.shape == (16, 3, 16, 16) and masks.dtype == torch.bool

    whole = _region(slice(0, 12), slice(0, 12))
    # Point 0 at (x=2, y=2): left-top subpart, left part, whole.
    assert torch.equal(masks[0, 0], _region(slice(0, 6), slice(0, 6)))
    assert torch.equal(masks[0, 1], _region(slice(0, 12), slice(0, 6)))
    assert torch.equal(masks[0, 2], whole)
    # Point 4 (row 1, col 0) at (x=2, y=6): left-bottom subpart.
    assert torch.equal(masks[4, 0], _region(slice(6, 12), slice(0, 6)))
    # Point 6 (row 1, col 2) at (x=10, y=6): right part, which is a single subpart.
    right = _region(slice(0, 12), slice(6, 12))
    assert torch.equal(masks[6, 0], right) and torch.equal(masks[6, 1], right)
    assert torch.equal(masks[6, 2], whole)
    # Point 15 at (x=14, y=14) lies on background: the background region at every level.
    for level in range(3):
        assert torch.equal(masks[15, level], ~whole)


def test_ground_truth_teacher_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        GroundTruthTeacher(16, 4)(np.zeros((16, 16, 3), np.uint8), tmp_path / "nothing.png")


# ------------------------------------------------------------------------------------------ SamTeacher


@pytest.fixture(scope="module")
def tiny_sam():
    # Seed 1: SAM's raw order is ascending by area at some points and not at others, so the
    # "area" order is exercised per point.
    return build_tiny_sam(seed=1)


def _image(size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _is_sorted_by_area(masks):
    area = masks.flatten(2).sum(2)
    return bool((area[:, :-1] <= area[:, 1:]).all())


def test_build_tiny_sam_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_tiny_sam(seed=1), build_tiny_sam(seed=1)
    assert torch.equal(torch.rand(1), expected)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_sam_teacher_shape_and_area_order(tiny_sam):
    image = _image(64)
    raw = SamTeacher(tiny_sam, 64, 8, level_order="sam")(image)
    assert raw.shape == (64, 3, 64, 64) and raw.dtype == torch.bool and raw.device.type == "cpu"
    assert not _is_sorted_by_area(raw), "seed should give some points out of area order"

    # Small batches: also checks that batching does not change the result.
    ordered = SamTeacher(tiny_sam, 64, 8, level_order="area", points_per_batch=24)(image)
    assert ordered.shape == raw.shape and _is_sorted_by_area(ordered)
    assert torch.equal(ordered, order_levels(raw, "area"))


@pytest.mark.parametrize("labels", ["reference", "positive"])
def test_sam_teacher_matches_point_by_point_predict(tiny_sam, labels):
    from segment_anything import SamPredictor

    image = _image(32, seed=1)
    masks = SamTeacher(tiny_sam, 32, 4, level_order="sam", labels=labels)(image)
    assert masks.shape == (16, 3, 32, 32)

    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image)
    points = point_grid(32, 4)
    for i in (0, 1, 5, 15):
        label = i if labels == "reference" else 1
        expected, _, _ = predictor.predict(points[i : i + 1], np.array([label]), multimask_output=True)
        assert torch.equal(masks[i], torch.from_numpy(expected))
    # Different points give different masks, so the comparison above can tell points apart.
    assert not torch.equal(masks[0], masks[15])


def test_point_labels_reach_sams_prompt_encoder_on_both_paths(tiny_sam):
    """"reference": label i for point i, as the authors' code passes them (0 negative, 1 positive, the rest no label
    embedding); "positive": 1 everywhere. Both teacher paths hand exactly these to SAM's prompt encoder."""
    seen = []
    hook = tiny_sam.prompt_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["points"][1].flatten().cpu()), with_kwargs=True)
    image = _image(32, seed=2)
    masks = {}
    try:
        for labels, expected in (("reference", torch.arange(16)), ("positive", torch.ones(16, dtype=torch.int))):
            teacher = SamTeacher(tiny_sam, 32, 4, level_order="sam", labels=labels, points_per_batch=5)
            for path in (lambda: teacher(image), lambda: teacher.masks(torch.from_numpy(image)[None])[0]):
                seen.clear()
                masks[labels] = path()
                assert torch.equal(torch.cat(seen), expected.int()), labels
    finally:
        hook.remove()
    # the switch changes SAM's answer: points 2.. lose the positive label's embedding
    assert torch.equal(masks["reference"][1], masks["positive"][1])  # label 1 either way
    assert not torch.equal(masks["reference"][2:], masks["positive"][2:])
    with pytest.raises(ValueError, match="reference.*positive"):
        SamTeacher(tiny_sam, 32, 4, labels="negative")


def test_sam_teacher_rejects_wrong_image(tiny_sam):
    with pytest.raises(ValueError, match="uint8"):
        SamTeacher(tiny_sam, 32, 4)(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="area.*sam"):
        SamTeacher(tiny_sam, 32, 4, level_order="random")


# ------------------------------------------------------------------------------------- sam_checkpoint


def test_checkpoint_table():
    assert SAM_CHECKPOINTS["vit_h"].filename == "sam_vit_h_4b8939.pth"
    assert SAM_CHECKPOINTS["vit_h"].sha256_prefix == "4b8939"
    assert SAM_CHECKPOINTS["vit_b"].url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert sorted(SAM_CHECKPOINTS) == ["vit_b", "vit_h", "vit_l"]
    with pytest.raises(ValueError, match="vit_b.*vit_h.*vit_l"):
        sam_checkpoint("vit_x", Path("/nowhere"), download=False)


def test_checkpoint_missing_without_download(tmp_path):
    spec = SAM_CHECKPOINTS["vit_b"]
    with pytest.raises(FileNotFoundError) as err:
        sam_checkpoint("vit_b", tmp_path, download=False)
    msg = str(err.value)
    assert spec.url in msg and spec.sha256_prefix in msg and str(tmp_path) in msg
    assert f"wget -P {tmp_path} {spec.url}" in msg


def test_checkpoint_wrong_hash_refused(tmp_path):
    bad = tmp_path / "sam_vit_b_01ec64.pth"
    bad.write_bytes(b"not a checkpoint")
    actual = hashlib.sha256(b"not a checkpoint").hexdigest()[:6]
    with pytest.raises(RuntimeError) as err:
        sam_checkpoint("vit_b", tmp_path, download=True)
    msg = str(err.value)
    assert actual in msg and "01ec64" in msg and "wget -P" in msg
    assert bad.read_bytes() == b"not a checkpoint"  # refused, not overwritten


def test_checkpoint_no_network_gives_clear_message(tmp_path, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = SAM_CHECKPOINTS["vit_l"]
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError) as err:
        sam_checkpoint("vit_l", target, download=True)
    msg = str(err.value)
    assert spec.url in msg and spec.sha256_prefix in msg and f"wget -P {target} {spec.url}" in msg
    assert isinstance(err.value.__cause__, urllib.error.URLError)
    assert list(target.iterdir()) == []  # no partial file left behind


def test_checkpoint_verified_download_and_reuse(tmp_path, monkeypatch):
    # Pretend vit_b's official file is this content by matching its hash prefix in a fake table entry.
    content = b"fake weights"
    prefix = hashlib.sha256(content).hexdigest()[:6]
    monkeypatch.setitem(SAM_CHECKPOINTS, "vit_b", SamCheckpoint(f"sam_vit_b_{prefix}.pth", "12 B"))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        Path(dst).write_bytes(content)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = sam_checkpoint("vit_b", tmp_path, download=True)
    assert path == tmp_path / f"sam_vit_b_{prefix}.pth" and path.read_bytes() == content
    assert calls == [(f"https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_{prefix}.pth", prefix)]
    assert sam_checkpoint("vit_b", tmp_path, download=True) == path and len(calls) == 1  # reused
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_profiles_sam_is_the_verified_checkpoint_or_random_weights(tmp_path, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    profile = get_profile("paper", sam_model="vit_b", sam_checkpoint_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=f"wget -P {tmp_path}"):
        SamTeacher.from_profile(profile, "cpu")
    teacher = SamTeacher.from_profile(get_profile("rehearsal", image_size=64, grid=4), "cpu")  # random, no download
    assert teacher.labels.flatten().tolist() == list(range(16)) and teacher.sam.image_encoder.img_size == 256
    with pytest.raises(ValueError, match="no released weights"):
        build_sam("tiny", "cpu", checkpoint=tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(ValueError, match="vit_h.*tiny"):
        build_sam("vit_x", "cpu")
