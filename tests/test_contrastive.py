import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partwhole import contrastive
from partwhole.contrastive import (
    ORIGINAL,
    PUBLISHED_IMAGENET,
    ContrastiveAgglomerator,
    TwoViews,
    parameter_counts,
    supcon_loss,
)
from partwhole.model import Agglomerator, AgglomeratorConfig
from partwhole.profiles import get_profile

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


def test_two_views_differ_and_are_model_inputs():
    torch.manual_seed(0)
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    views, label = TwoViews(pixels, np.array([2, 0]), np.array([5, 6, 7]))[0]
    assert views.shape == (2, 3, 32, 32) and views.dtype == torch.float32
    assert label.item() == 7
    assert not torch.equal(views[0], views[1])


def test_model_gives_unit_embeddings_per_view():
    model = ContrastiveAgglomerator(TINY).eval()
    out = model(torch.randn(3, 2, 3, 32, 32))
    assert out.shape == (3, 2, contrastive.CONTRAST_DIM)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 2), atol=1e-5)


def test_published_imagenet_config_cannot_be_built():
    # 32-d columns over 32 x 32 patches leave the tokenizer 32 // 1024 = 0 channels
    with pytest.raises(ValueError, match="divisible by patch_size"):
        Agglomerator(PUBLISHED_IMAGENET)


def test_original_configuration_parameter_count():
    """256 px, 4 x 4 columns of 768 dims, 2 levels, 512-d contrastive head, 10 classes: the paper's 172 M."""
    width = ORIGINAL.n_columns * ORIGINAL.patch_dim  # 16 columns x 768 = 12,288
    level_mlp = (768 * 3072 + 3072) + (3072 * 768 + 768)  # one level's 1x1 convs, 768 -> 3072 -> 768
    backbone = (
        (3 * 1 + 1 * 1 + 1 * 3) * 9 + 2 * (1 + 1 + 3)  # tokenizer: 3 convs to 768 / 16**2 = 3 channels, BatchNorms
        + 2 * 768  # initial levels
        + 2 * 2 * 16 + 2 * level_mlp  # bottom-up: LayerNorm(16) x 2, 2 levels
        + 2 * 2 * 16 + level_mlp  # top-down: LayerNorm(16) x 2, 1 level
        + 4  # contribution weights
    )
    head = 2 * 768 + 3 * 2 * width + (width * width + width) + (width * 512 + 512)
    classifier = (512 * 512 + 512) + (512 * 10 + 10)
    counts = parameter_counts(ORIGINAL)
    assert counts == {"backbone": backbone, "contrastive_head": head, "classifier": classifier, "total": 171_811_287}
    assert round(counts["total"] / 1e6) == 172


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
    assert set(scores) == {"holdout", "val"} and all(0 <= s <= 1 for s in scores.values())
