import numpy as np
import torch
from fastai.layers import SimpleSelfAttention
from fastai.vision.models.xresnet import XResNet
from PIL import Image
from kornia.filters import MaxBlurPool2D
from torch import nn

from partwhole.baselines import xresnet
from partwhole.datasets.data import list_images
from partwhole.method.model import count_parameters


def test_the_recipe_model_is_the_entries_xse_resnext50_with_mish_self_attention_and_max_blur_pool():
    model = xresnet.build(n_classes=10)
    modules = list(model.modules())
    assert isinstance(model, XResNet) and xresnet.ARCHITECTURE == "xse_resnext50"
    assert any(isinstance(m, nn.Mish) for m in modules) and not any(isinstance(m, nn.ReLU) for m in modules)
    assert sum(isinstance(m, SimpleSelfAttention) for m in modules) == 1  # in the last block of the first stage
    # the stem's max-pool and one per strided shortcut, each a MaxBlurPool as the leaderboard entries had them
    assert sum(isinstance(m, MaxBlurPool2D) for m in modules) == 4
    assert not any(isinstance(m, nn.MaxPool2d) for m in modules)
    assert sum(isinstance(m, xresnet.MaxBlurPool2020) for m in xresnet.build(10, pool="kornia2020").modules()) == 4
    assert count_parameters(model) == 25_616_155  # xse_resnext50 with self-attention, 10 classes (MaxBlurPool: none)


def test_output_shape_for_a_tiny_input():
    model = xresnet.build(n_classes=10).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_one_epoch_on_generated_images(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 2)):
        for name in ("a", "b"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    train, val = list_images(tmp_path, "train"), list_images(tmp_path, "val")
    learn, scores, history = xresnet.train(train, np.array([1, 2, 3, 6, 7]), np.array([0, 5]), val, size=32,
                                           batch_size=4, epochs=1, seed=0, device="cpu")
    assert set(scores) == {"holdout", "val", "val_by_class", "val_confusion"}
    assert all(0 <= scores[s] <= 1 for s in ("holdout", "val"))
    assert np.sum(scores["val_confusion"]) == len(val) and np.trace(scores["val_confusion"]) == round(scores["val"] * 4)
    assert len(history["train_loss"]) == 1 and np.isfinite(history["train_loss"][0])
    assert len(learn.dls.train_ds) == 5 and len(learn.dls.valid_ds) == 2  # image 4 and 8 neither fit nor held out


def test_the_entries_max_blur_pool_is_kornia_2020_s_not_today_s():
    x = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    then, now = xresnet.MaxBlurPool2020()(x), MaxBlurPool2D(3)(x)
    assert then.shape == now.shape == (2, 8, 8, 8)
    # by hand: a 3 x 3 max-pool of stride 1, a 5 x 5 binomial blur (reflect padding), every other pixel averaged
    peaks = torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    binomial = torch.tensor([1.0, 4, 6, 4, 1])
    kernel = (binomial[:, None] * binomial[None, :] / 256).expand(8, 1, 5, 5)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(peaks, (2, 2, 2, 2), mode="reflect"), kernel, groups=8)
    halved = blurred.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))  # bilinear x 0.5 between pixel pairs
    assert torch.allclose(then, halved, atol=1e-5)
    assert (then - now).abs().mean() > 0.3  # the two operators differ


def test_the_leaderboard_switches_are_profile_fields():
    import pytest

    from partwhole.study.profiles import SettingsError, get_profile

    paper = get_profile("paper")
    assert paper.xresnet_wds == (1e-4, 1e-2, 1e-2) and paper.xresnet_normalize is False
    assert paper.xresnet_pool == "kornia2020"
    with pytest.raises(SettingsError, match="one weight decay"):
        get_profile("paper", xresnet_wds=[1e-2])
    with pytest.raises(SettingsError, match="kornia2020"):
        get_profile("paper", xresnet_pool="blur")


def test_the_family_and_widths_are_fastais():
    small = xresnet.build(10, "xresnet18", widen=0.25)
    assert count_parameters(small) < count_parameters(xresnet.build(10, "xresnet18")) / 8
    assert any(isinstance(m, MaxBlurPool2D) for m in small.modules())
