import numpy as np
import torch
from fastai.layers import SimpleSelfAttention
from fastai.vision.models.xresnet import XResNet
from PIL import Image
from kornia.filters import MaxBlurPool2D
from torch import nn

from partwhole import xresnet
from partwhole.data import list_images
from partwhole.model import count_parameters


def test_the_recipe_model_is_the_entries_xse_resnext50_with_mish_self_attention_and_max_blur_pool():
    model = xresnet.build(n_classes=10)
    modules = list(model.modules())
    assert isinstance(model, XResNet) and xresnet.ARCHITECTURE == "xse_resnext50"
    assert any(isinstance(m, nn.Mish) for m in modules) and not any(isinstance(m, nn.ReLU) for m in modules)
    assert sum(isinstance(m, SimpleSelfAttention) for m in modules) == 1  # in the last block of the first stage
    # the stem's max-pool and one per strided shortcut, each a MaxBlurPool as the leaderboard entries had them
    assert sum(isinstance(m, MaxBlurPool2D) for m in modules) == 4 and not any(isinstance(m, nn.MaxPool2d) for m in modules)
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


def test_the_family_and_widths_are_fastais():
    small = xresnet.build(10, "xresnet18", widen=0.25)
    assert count_parameters(small) < count_parameters(xresnet.build(10, "xresnet18")) / 8
    assert any(isinstance(m, MaxBlurPool2D) for m in small.modules())
