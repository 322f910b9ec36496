"""The method as notebooks 02 and 03 write it out (their cells tagged "method") equals the library's implementation,
on tiny random inputs: the notebooks teach the code that runs."""
import copy
import dataclasses
import random
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback, CancelFitException

from partwhole.method.embedder import CROP_MODES, MaskEmbedder, masked_image
from partwhole.method.model import Agglomerator, AgglomeratorConfig, ProbeHead, top_level_features
from partwhole.study.profiles import get_profile
from partwhole.method.train import EpochHistory, LevelWeightedMSE, epoch_seed, fit, learning_rates, pretraining_learner

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def method_cells(notebook: str) -> dict:
    """The names defined by a notebook's cells tagged "method", executed in order in a fresh namespace."""
    cells = [cell for cell in json.loads((NOTEBOOKS / notebook).read_text())["cells"]
             if "method" in cell["metadata"].get("tags", [])]
    assert cells, f"{notebook} has no cell tagged 'method'"
    namespace = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), f"{notebook} (method cell)", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def nb02():
    return method_cells("02_mask_embeddings.ipynb")


@pytest.fixture(scope="module")
def nb03():
    return method_cells("03_pretraining_and_probe.ipynb")


@pytest.mark.parametrize("crop", CROP_MODES)
def test_masking_and_embedding_equal_the_embedders(nb02, crop):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    mask = np.zeros((48, 48), dtype=bool)
    mask[5:20, 8:40] = True  # a wide box: the centre crop cuts its sides
    np.testing.assert_array_equal(nb02["masked"](image, mask, crop), np.asarray(masked_image(image, mask, crop)))
    embedder = MaskEmbedder("test_resnet", False, {}, {"input_size": (3, 32, 32), "crop_pct": 1.0}, "cpu")
    reference = embedder([masked_image(image, mask, crop)])[0]
    torch.testing.assert_close(nb02["mask_embedding"](embedder.model, embedder.transform, image, mask, crop), reference)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)  # float64: LayerNorm over nearly identical columns amplifies float32 rounding
    model = Agglomerator(AgglomeratorConfig(image_size=32, grid=4, patch_dim=32, target_dim=32)).double()
    with torch.no_grad():
        model.contribution_weights.copy_(torch.rand(4))  # unequal weights: a swapped contribution would show
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    return model, images, model.tokens(images).detach(), torch.randn(2, 16, 3, 32, dtype=torch.float64)


def test_contributions_equal_the_agglomerators(nb03, tiny):
    model, _, tokens, Z = tiny
    expected = model.contributions(tokens, Z)
    torch.testing.assert_close(nb03["bottom_up"](model, tokens, Z), expected["bottom_up"])
    torch.testing.assert_close(nb03["top_down"](model, Z), expected["top_down"])
    torch.testing.assert_close(nb03["consensus_attention"](Z), expected["consensus"])


def test_iteration_and_forward_pass_equal_the_agglomerators(nb03, tiny):
    model, images, tokens, Z = tiny
    torch.testing.assert_close(nb03["iteration"](model, tokens, Z), model.step(tokens, Z))
    torch.testing.assert_close(nb03["agglomerator"](model, images), model(images))


def test_loss_equals_level_weighted_mse(nb03, tiny):
    *_, Z = tiny
    M_e = torch.randn_like(Z)
    loss = LevelWeightedMSE((0.1, 0.2, 0.7))
    torch.testing.assert_close(nb03["level_weighted_mse"](Z, M_e, loss.weights), loss(Z, M_e))


def test_probe_equals_the_classifiers_head(nb03, tiny):
    *_, Z = tiny
    head = ProbeHead(16, 32, 10).double().eval()
    torch.testing.assert_close(nb03["probe_logits"](head, Z), head(top_level_features(Z)))


class FirstEpochOnly(Callback):
    order = EpochHistory.order + 1  # once the epoch's loss is in the history

    def after_epoch(self):
        raise CancelFitException()


def test_plain_epoch_equals_fastais_first_epoch(nb03):
    from lion_pytorch import Lion

    profile = dataclasses.replace(get_profile("embedded"), image_size=32, grid=4, batch_size=4, pretrain_epochs=3)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(12, 16, 3, 32)).astype(np.float16)
    learn = pretraining_learner(profile, pixels, targets, np.arange(8), np.arange(8, 12), "cpu")
    plain = copy.deepcopy(learn.model)  # the same initial weights
    steps = len(learn.dls.train)
    learn.add_cb(FirstEpochOnly())
    with learn.no_bar(), learn.no_logging():
        history = fit(learn, profile, profile.pretrain_epochs)  # the run's schedule, stopped after its first epoch
    batches = learn.dls.train
    batches.rng = random.Random(epoch_seed(profile.seed, 0))  # the shuffle of the run's first epoch
    optimizer = Lion(plain.parameters(), lr=profile.lr, betas=tuple(profile.betas), weight_decay=profile.wd)
    rates = learning_rates(profile, profile.pretrain_epochs * steps)[:steps]
    loss = nb03["train_one_epoch"](plain, optimizer, batches, rates, LevelWeightedMSE(profile.level_weights).weights)
    assert loss == pytest.approx(history["train_loss"][0], rel=1e-6)
    for (name, mine), theirs in zip(plain.state_dict().items(), learn.model.state_dict().values()):
        torch.testing.assert_close(mine, theirs, msg=name)
