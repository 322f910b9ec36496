"""The fast teacher path against the straightforward one, and sharded, cached target builds.

Tiny random models throughout (no weights can be downloaded here): SAM from segment_anything's classes, timm's
test_vit and test_maxvit. Every equality check is paired with evidence that its measure can tell things apart.
"""
import dataclasses

import numpy as np
import pytest
import timm
import torch

from partwhole.analysis import agreement as agreement_module
from partwhole.datasets import synthetic
from partwhole.analysis.agreement import FLOAT32_ATOL, agreement, check_stored_target, mask_iou
from partwhole.datasets.data import image_cache, list_images
from partwhole.study.profiles import get_profile
from partwhole.method.embedder import MaskEmbedder, MaskedImageTransform, distinct_masks, embed_masks, masked_image
from partwhole.method.sam import SamTeacher, build_tiny_sam, postprocess_matrix
from partwhole.method.targets import CachedMasks, build_targets, targets_path
from partwhole.method.teachers import make_teacher, teacher_masks

SIZE, GRID = 32, 4


@pytest.fixture(scope="module")
def sam():
    return build_tiny_sam(seed=1, input_size=256)  # a 1024 px frame costs the reference 10 s here


def test_low_resolution_logits_go_straight_to_the_image_as_sam_postprocesses_them():
    sam = build_tiny_sam(seed=1)  # the released models' 1024 px frame
    logits = torch.randn(5, 3, *sam.prompt_encoder.mask_input_size)
    for size in (32, 50):
        resize = postprocess_matrix(sam, size)
        expected = sam.postprocess_masks(logits, (1024, 1024), (size, size))
        assert torch.allclose(resize @ logits @ resize.T, expected, atol=1e-5)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


def vit_embedder(**kwargs):
    return MaskEmbedder("test_vit", False, {"img_size": SIZE}, {"input_size": (3, SIZE, SIZE), "crop_pct": 1.0}, "cpu",
                        **kwargs)


@pytest.mark.parametrize("labels", ["reference", "positive"])
def test_fast_sam_masks_match_the_predictor_point_by_point(sam, pixels, labels):
    teacher = SamTeacher(sam, SIZE, GRID, points_per_batch=7, labels=labels)
    fast = teacher.masks(torch.from_numpy(pixels))
    assert fast.shape == (3, GRID**2, 3, SIZE, SIZE) and fast.dtype == torch.bool
    reference = torch.stack([teacher(image) for image in pixels])
    # the same resize of the image (SAM's own transform): what is left is float rounding
    assert mask_iou(fast, reference).mean() >= 0.999
    # the measure tells different masks apart: other images' masks, other points' masks
    assert mask_iou(fast, reference.roll(1, dims=0)).mean() < 0.9
    assert mask_iou(fast, reference.roll(1, dims=1)).mean() < 0.95


TIMM_CONFIGS = [
    {"input_size": (3, 64, 64), "interpolation": "bicubic", "crop_pct": 1.0},  # the embedded profile's
    {"input_size": (3, 24, 24), "interpolation": "bilinear", "crop_pct": 0.9},  # downscaling
    {"input_size": (3, 256, 256), "interpolation": "bicubic", "crop_pct": 0.95},  # MaxViT-pico's (paper)
]


@pytest.mark.parametrize("config", TIMM_CONFIGS)
def test_masked_image_transform_reproduces_timms_pil_transform(config):
    config = config | {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_mode": "center"}
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((7, SIZE, SIZE), bool)
    masks[0, 3:20, 5:9] = True  # tall
    masks[1, 10:12, 2:30] = True  # wide
    masks[2, 5, 7] = True  # one pixel
    masks[3] = rng.random((SIZE, SIZE)) > 0.5  # scattered: the bounding box is nearly the frame
    masks[4, 8:24, 8:24] = rng.random((16, 16)) > 0.3
    masks[5] = True  # masks[6] stays empty: embedded as it is
    timm_transform = timm.data.create_transform(**config, is_training=False)
    expected = torch.stack([timm_transform(masked_image(image, m, crop)) for crop in ("none", "bbox") for m in masks])
    transform = MaskedImageTransform(config)
    images = torch.from_numpy(image).expand(len(masks), -1, -1, -1)
    got = torch.cat([transform(images, torch.from_numpy(masks), crop) for crop in ("none", "bbox")])
    assert got.shape == expected.shape
    one_level = 1 / 255 / torch.tensor(config["std"]).view(1, 3, 1, 1)  # a uint8 step after normalisation
    # PIL's fixed-point weights: a few pixels one uint8 level off, very few two (a noise image is the worst case)
    assert ((got - expected).abs() <= 2.001 * one_level).all()
    assert ((got - expected).abs() / one_level).mean() < 0.05


def test_masked_image_transform_refuses_what_it_does_not_reproduce():
    with pytest.raises(ValueError, match="crop_mode"):
        MaskedImageTransform({"input_size": (3, 32, 32), "crop_pct": 1.0, "crop_mode": "squash",
                              "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3})


@pytest.mark.parametrize("precision,labels", [("float32", "reference"), ("bfloat16", "reference"),
                                              ("float32", "positive")])
def test_fast_targets_equal_the_straightforward_path(sam, pixels, precision, labels):
    embedder = vit_embedder(precision=precision, channels_last=precision == "bfloat16")
    teacher = SamTeacher(sam, SIZE, GRID, labels=labels)
    result = agreement(teacher, embedder, pixels[:2], [None, None], ("none", "bbox"))
    assert result["mask_iou"] >= 0.999 and result["cosine_mean"] >= 0.99 and result["cosine_min"] >= 0.98


def test_sam_in_bfloat16_is_close_but_not_proven(sam, pixels):
    """A random tiny SAM's logits sit near the threshold, so its masks flip under any small change (the
    float32 fast path scores 0.995 for the image resize alone): this bounds the bfloat16 path loosely;
    sam_precision stays float32 until the released weights are checked (`python -m partwhole.scale.benchmark`)."""
    float32 = SamTeacher(sam, SIZE, GRID).masks(torch.from_numpy(pixels))
    bfloat16 = SamTeacher(sam, SIZE, GRID, precision="bfloat16").masks(torch.from_numpy(pixels))
    assert 0.97 <= mask_iou(float32, bfloat16).mean() < 1


def test_fast_targets_equal_the_straightforward_path_with_maxvit(sam, pixels):
    teacher = SamTeacher(sam, SIZE, 2)  # 4 points: few masks, as MaxViT is slow on a CPU
    embedder = MaskEmbedder("test_maxvit", False, {"img_size": 64}, {"input_size": (3, 64, 64)}, "cpu",
                            precision="bfloat16", channels_last=True)
    result = agreement(teacher, embedder, pixels[:1], [None], ("none", "bbox"))
    assert result["mask_iou"] >= 0.99 and result["cosine_min"] >= 0.99


def test_agreement_sees_targets_of_the_wrong_images(sam, pixels, monkeypatch):
    fast = agreement_module.teacher_masks
    monkeypatch.setattr(agreement_module, "teacher_masks", lambda *args: fast(*args).flip(0))
    result = agreement(SamTeacher(sam, SIZE, GRID), vit_embedder(), pixels[:2], [None, None], ("none",))
    # each measure fails the thresholds that the equality tests hold the fast path to
    assert result["mask_iou"] < 0.9 and result["cosine_mean"] < 0.99 and result["cosine_min"] < 0.98


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("scenes"), seed=0, image_size=SIZE, train_per_class=1,
                              val_per_class=1)
    profile = get_profile("embedded", image_size=SIZE, grid=GRID,
                          embedder_data_config={"input_size": (3, SIZE, SIZE), "crop_pct": 1.0}, teacher_images=4)
    images, pixels = image_cache(list_images(root, "train"), SIZE, tmp_path_factory.mktemp("cache"))
    return profile, images, pixels, MaskEmbedder.from_profile(profile, "cpu")


def test_ground_truth_targets_equal_the_straightforward_path(scenes):
    profile, images, pixels, embedder = scenes  # scene masks are tight: the bounding-box crops are small
    result = agreement(make_teacher(profile, "cpu"), embedder, pixels[:3], images.paths[:3], ("none", "bbox"))
    assert result["mask_iou"] == 1 and result["cosine_min"] >= 0.99


def test_sharded_build_gives_the_same_targets(scenes, tmp_path):
    profile, images, pixels, embedder = scenes
    teacher = make_teacher(profile, "cpu")
    build_targets(profile, images, pixels, teacher, embedder, tmp_path / "one", chunk_size=3)
    with pytest.raises(RuntimeError, match="run the other ranks"):  # rank 0 alone cannot assemble
        build_targets(profile, images, pixels, teacher, embedder, tmp_path / "two", chunk_size=3, shard=(0, 2))
    build_targets(profile, images, pixels, teacher, embedder, tmp_path / "two", chunk_size=3, shard=(1, 2))
    assert not targets_path(tmp_path / "two", "train", "none").exists()
    build_targets(profile, images, pixels, teacher, embedder, tmp_path / "two", chunk_size=3, shard=(0, 2))
    for crop in ("none", "bbox"):
        one = targets_path(tmp_path / "one", "train", crop).read_bytes()
        assert targets_path(tmp_path / "two", "train", crop).read_bytes() == one


def test_sam_build_batches_images_and_caches_bit_packed_masks(scenes, sam, tmp_path):
    profile, images, pixels, embedder = scenes
    profile = dataclasses.replace(profile, teacher="sam", mask_cache=True, teacher_images=2)
    teacher = SamTeacher(sam, SIZE, GRID)
    manifests = build_targets(profile, images, pixels, teacher, embedder, tmp_path, chunk_size=5)
    assert manifests["bbox"]["teacher"]["kind"] == "sam"
    stored = np.load(targets_path(tmp_path, "train", "bbox"))
    for batch in ([4], [5, 6]):  # the end of chunk 0 (a batch of one), the first batch of chunk 1
        masks = teacher_masks(teacher, pixels[batch], None)
        expected = embed_masks(torch.from_numpy(pixels[batch]), distinct_masks(masks), embedder, ("bbox",))["bbox"]
        assert np.allclose(stored[batch], expected.numpy(), atol=1e-2, rtol=1e-2)
        cache = CachedMasks(tmp_path, profile, images)
        for i, index in enumerate(batch):
            assert torch.equal(cache.masks(index), masks[i])
            assert torch.equal(cache(None, images.paths[index]), masks[i])  # as a teacher, by path
    assert CachedMasks.available(tmp_path, profile, images)
    assert not CachedMasks.available(tmp_path, dataclasses.replace(profile, point_labels="positive"), images)
    packed = sum(f.stat().st_size for f in (tmp_path / "masks-train").iterdir()) / len(images)
    assert packed < GRID**2 * 3 * SIZE**2 / 6  # about a bit per mask pixel (a random SAM's masks are all distinct)


def test_a_stored_target_is_checked_by_the_precision_it_was_built_in():
    computed = torch.linspace(-3, 3, 64)
    assert check_stored_target(computed, computed + 0.005, "float32") == pytest.approx(0.005, abs=1e-6)
    with pytest.raises(AssertionError):
        check_stored_target(computed, computed + 0.02, "float32")  # float16 storage explains 1e-3, not 0.02
    assert check_stored_target(computed, computed * 1.01 + 0.01, "bfloat16") > FLOAT32_ATOL  # same direction
    with pytest.raises(AssertionError, match="cosine"):
        check_stored_target(computed, computed.flip(0), "bfloat16")
    with pytest.raises(AssertionError, match="cosine"):
        check_stored_target(computed, torch.full_like(computed, float("nan")), "bfloat16")
