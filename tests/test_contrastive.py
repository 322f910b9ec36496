import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partwhole.baselines import contrastive
from partwhole.baselines.contrastive import (
    ORIGINAL,
    AugmentedViews,
    ContrastiveAgglomerator,
    FrozenClassifier,
    parameter_counts,
    supcon_loss,
)
from partwhole.method.model import AgglomeratorConfig
from partwhole.study.profiles import get_profile
from partwhole.method.train import to_model_input

TINY = AgglomeratorConfig(image_size=32, grid=4, patch_dim=32, levels=2, target_dim=32)
E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def two_by_two(first, second):
    """2 images x 2 identical views: image 0 is `first`, image 1 is `second`."""
    return torch.stack([torch.stack([first, first]), torch.stack([second, second])])


def test_supcon_by_hand_two_classes():
    # every anchor (say image 0, view 0 = e1) sees: its other view (similarity 1, the one positive) and the two
    # views of image 1 (similarity 0); at temperature 1: -log(e / (e + 2)) = log(1 + 2/e)
    loss = supcon_loss(two_by_two(E1, E2), torch.tensor([0, 1]), temperature=1.0, base_temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e))


def test_supcon_by_hand_one_class():
    # same anchor, but all three others are positives: mean of log(e/(e+2)), log(1/(e+2)), log(1/(e+2))
    loss = supcon_loss(two_by_two(E1, E2), torch.tensor([0, 0]), temperature=1.0, base_temperature=1.0)
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 1 / 3)


def test_supcon_temperature_ratio_scales_the_loss():
    features, labels = two_by_two(E1, E2), torch.tensor([0, 1])
    assert supcon_loss(features, labels, 1.0, 0.5).item() == pytest.approx(2 * math.log(1 + 2 / math.e))


def test_supcon_decreases_when_same_class_features_align():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    scattered = F.normalize(torch.randn(8, 2, 16), dim=-1)
    centres = F.normalize(torch.randn(4, 16), dim=-1)
    aligned = F.normalize(centres[labels].unsqueeze(1) + 0.1 * torch.randn(8, 2, 16), dim=-1)
    assert supcon_loss(aligned, labels) < supcon_loss(scattered, labels)


def test_views_differ_and_are_model_inputs():
    torch.manual_seed(0)
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    views, label = AugmentedViews(pixels, np.array([2, 0]), np.array([5, 6, 7]))[0]
    assert views.shape == (2, 3, 32, 32) and views.dtype == torch.float32
    assert label.item() == 7
    assert not torch.equal(views[0], views[1])
    one, _ = AugmentedViews(pixels, np.array([2, 0]), np.array([5, 6, 7]), n_views=1)[1]
    assert one.shape == (3, 32, 32)
    plain = AugmentedViews(pixels, np.array([2, 0]), np.array([5, 6, 7]), n_views=1, augment=lambda image: image)
    assert torch.equal(plain[1][0], to_model_input(pixels[0]))  # no augmentation: the image itself


def test_model_gives_unit_embeddings_per_view():
    model = ContrastiveAgglomerator(TINY).eval()
    out = model(torch.randn(3, 2, 3, 32, 32))
    assert out.shape == (3, 2, contrastive.CONTRAST_DIM)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 2), atol=1e-5)


def test_original_configuration_is_the_published_one_with_172_331_116_parameters():
    """config_IMAGENETTE_original.cfg: 256 px, a 64 px tokenizer map in 32 x 32 patches (2 x 2 columns) of 2,048
    dims, 2 levels, 512-d contrastive head, 10 classes: 172,331,116 parameters, the paper's 172 M. Each part counted
    by hand from the layers' shapes."""
    assert (ORIGINAL.image_size, ORIGINAL.grid, ORIGINAL.patch_size, ORIGINAL.patch_dim, ORIGINAL.levels) == (
        256, 2, 32, 2048, 2)
    assert ORIGINAL.n_iters == 4
    width = ORIGINAL.n_columns * ORIGINAL.patch_dim  # 4 columns x 2,048 = 8,192
    backbone = (
        (3 * 1 + 1 * 1 + 1 * 2) * 9 + 2 * (1 + 1 + 2)  # tokenizer: 3 convs to 2048 / 32**2 = 2 channels, BatchNorms
        + 4  # contribution weights
        + 2 * 2048  # initial levels
        + 2 * 2 * 4 + (4096 * 16384 // 2 + 16384) + (16384 * 4096 // 2 + 4096)  # bottom-up: 2 groups, LayerNorm(4) x 2
        + 2 * 2 * 4 + (2048 * 8192 + 8192) + (8192 * 2048 + 2048)  # top-down: 1 level
    )
    head = 2 * 2048 + 3 * 2 * width + (width * width + width) + (width * 512 + 512)
    classifier = (512 * 512 + 512) + (512 * 10 + 10)
    counts = parameter_counts(ORIGINAL)
    assert counts == {"backbone": backbone, "contrastive_head": head, "classifier": classifier, "total": 172_331_116}


def test_frozen_classifier_trains_only_its_head():
    model = FrozenClassifier(ContrastiveAgglomerator(TINY))
    frozen = {k: v.clone() for k, v in model.frozen.state_dict().items()}
    model.train()
    assert not model.frozen.training and all(not p.requires_grad for p in model.frozen.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(frozen[k], v) for k, v in model.frozen.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is not None for p in model.classifier.parameters())


def test_pretrain_and_classify_run_end_to_end():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(12) % 2
    splits = {"fit": (pixels, np.arange(8), labels), "holdout": (pixels, np.arange(8, 12), labels),
              "val": (pixels, np.arange(12), labels)}
    profile = get_profile("embedded", contrastive_epochs=1, probe_epochs=1, batch_size=4)
    learn, history = contrastive.pretrain(profile, TINY, splits, "cpu")
    assert len(history["train_loss"]) == 1 and np.isfinite(history["train_loss"][0])
    _, scores, _ = contrastive.classify(profile, learn.model, splits, "cpu")
    assert set(scores) == {"holdout", "val", "val_by_class", "val_confusion"} and 0 <= scores["val"] <= 1 and 0 <= scores["holdout"] <= 1
    assert all(s is None or 0 <= s <= 1 for s in scores["val_by_class"])
    _, scores, history = contrastive.frozen_random_classifier(profile, TINY, splits, "cpu")
    assert set(scores) == {"holdout", "val"} and len(history["train_loss"]) == 1


def test_held_out_batches_mix_classes_though_the_split_is_sorted_by_class():
    # a batch of one class has every view as a positive: its SupCon loss is log(2b - 1) or more, whatever the features
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 8)
    holdout = np.concatenate([np.arange(c * 8, c * 8 + 4) for c in range(3)])  # sorted by class, as holdout_split gives
    fit = np.setdiff1d(np.arange(24), holdout)
    splits = {"fit": (pixels, fit, labels), "holdout": (pixels, holdout, labels)}
    learn, _ = contrastive.pretrain(get_profile("embedded", contrastive_epochs=1, batch_size=4), TINY, splits, "cpu")
    classes_per_batch = [len(torch.unique(y)) for _, y in learn.dls.valid]
    assert len(classes_per_batch) == 3 and max(classes_per_batch) > 1
    assert sorted(np.concatenate([y.numpy() for _, y in learn.dls.valid])) == sorted(labels[holdout])  # all, once
