import dataclasses

import numpy as np
import pytest
import torch

from partwhole.core.devices import frozen_on
from partwhole.method.model import Agglomerator, AgglomeratorConfig
from partwhole.study.profiles import get_profile
from partwhole.method.train import LevelWeightedMSE, lion, load_checkpoint, save_checkpoint, to_model_input


def test_level_weighted_mse_by_hand():
    target = torch.zeros(1, 2, 3, 4)
    predicted = torch.zeros(1, 2, 3, 4)
    predicted[:, :, 0] = 1.0  # squared error 1 at level 0
    predicted[:, :, 1] = 2.0  # 4 at level 1
    predicted[:, :, 2] = 3.0  # 9 at level 2
    loss = LevelWeightedMSE((0.1, 0.2, 0.7))(predicted, target)
    assert loss.item() == pytest.approx((0.1 * 1 + 0.2 * 4 + 0.7 * 9) / 1.0)
    # weights are normalised by their sum: scaling them changes nothing
    assert LevelWeightedMSE((1.0, 2.0, 7.0))(predicted, target).item() == pytest.approx(loss.item())


def test_held_out_losses_of_the_student_and_of_the_mean_target():
    from partwhole.method.train import held_out_mse, mean_target_mse

    targets = np.random.default_rng(0).normal(size=(20, 4, 3, 5)).astype(np.float16)  # images, columns, levels, dims
    fit_idx, holdout_idx = np.arange(0, 20, 2), np.arange(1, 20, 2)
    fit, held = (torch.from_numpy(targets[i].astype(np.float32)) for i in (fit_idx, holdout_idx))
    by_hand = ((held - fit.mean(dim=0)) ** 2).mean(dim=(0, 1, 3))
    assert mean_target_mse(targets, fit_idx, holdout_idx, chunk=3) == pytest.approx(by_hand.tolist(), rel=1e-5)

    class Constant(torch.nn.Module):  # a student that ignores its image
        def forward(self, images):
            return fit.mean(dim=0).expand(len(images), -1, -1, -1)

    images = torch.zeros(len(holdout_idx), 3, 2, 2)
    batches = [(images[:4], held[:4]), (images[4:], held[4:])]  # batches of unequal size
    assert held_out_mse(Constant(), batches) == pytest.approx(by_hand.tolist(), rel=1e-5)
    student = held_out_mse(torch.nn.Identity(), [(held + 0.1, held)])  # off by 0.1 everywhere
    assert student == pytest.approx([0.01] * 3, rel=1e-4)
    loss = LevelWeightedMSE(get_profile("paper").level_weights)
    assert float((loss.weights * torch.tensor(student)).sum() / loss.weights.sum()) == pytest.approx(
        loss(held + 0.1, held).item(), rel=1e-5)  # the loss is its weighted average


def test_paper_loss_weights_favour_the_whole():
    loss = LevelWeightedMSE(get_profile("paper").level_weights)
    assert loss.weights.tolist() == pytest.approx([0.1, 0.2, 0.7])
    # an error of 1 at one level alone (b, n, L, d) costs that level's alpha over the alphas' sum (Eq. 2)
    target = torch.zeros(2, 4, 3, 8)
    errors = [target.index_fill(2, torch.tensor([level]), 1.0) for level in range(3)]
    assert [loss(error, target).item() for error in errors] == pytest.approx([0.1, 0.2, 0.7])


def test_lion_through_fastai_keeps_betas():
    model = torch.nn.Linear(2, 2)
    opt = lion((0.95, 0.98))(model.parameters(), lr=1e-3)
    group = opt.opt.param_groups[0]
    assert type(opt.opt).__name__ == "Lion" and group["betas"] == (0.95, 0.98)
    opt.set_hyper("wd", 0.075)  # fastai's name reaches Lion's decoupled weight decay
    assert group["weight_decay"] == 0.075


def test_model_input_is_imagenet_normalised_chw():
    pixels = np.full((2, 4, 4, 3), 255, dtype=np.uint8)
    x = to_model_input(pixels)
    assert x.shape == (2, 3, 4, 4)
    assert x[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    cfg = AgglomeratorConfig(image_size=32, grid=4, patch_dim=32, target_dim=32)
    path = tmp_path / "backbone.pt"
    save_checkpoint(Agglomerator(cfg), cfg, path)
    restored = load_checkpoint(Agglomerator(cfg), cfg, path)
    assert isinstance(restored, Agglomerator)
    other = AgglomeratorConfig(image_size=32, grid=2, patch_dim=32, target_dim=32)
    with pytest.raises(ValueError, match="grid: stored 4, this run 2"):
        load_checkpoint(Agglomerator(other), other, path)


def test_cost_estimate_scales_with_epochs_and_leaves_the_model_untouched(monkeypatch):
    import itertools

    from partwhole.core import timing
    from partwhole.study.profiles import get_profile
    from partwhole.method.train import pretraining_learner

    profile = get_profile("embedded", image_size=32, grid=4, patch_dim=32, batch_size=4)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(16, 16, 3, 32)).astype(np.float16)
    learn = pretraining_learner(profile, pixels, targets, np.arange(12), np.arange(12, 16), "cpu")
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    clock = itertools.count()  # the two timed steps of a batch of 4 images "take" exactly 1 s
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    # 1/8 s per image, 12 training + 4 validation images per epoch
    assert timing.estimate_fit_seconds(learn, 1) == 2.0 and timing.estimate_fit_seconds(learn, 10) == 20.0
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


def small_learner(**fields):
    from partwhole.study.profiles import get_profile
    from partwhole.method.train import pretraining_learner

    profile = get_profile("embedded", image_size=32, grid=4, patch_dim=32, batch_size=4, lr=5e-4, **fields)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(16, 16, 3, 32)).astype(np.float16)
    return profile, pretraining_learner(profile, pixels, targets, np.arange(12), np.arange(12, 16), "cpu")


def test_reference_schedule_replays_the_authors_one_cycle():
    """schedule="reference": the learning rate and Lion's first beta of every step are those of torch's OneCycleLR
    as the authors built it (sized for 2,000 epochs of 45,000 images), stepped once per batch of this run."""
    from partwhole.method.train import fit

    profile, learn = small_learner(schedule="reference")
    fit(learn, profile, 2)  # 2 epochs of 3 batches
    lrs, beta1 = learn.recorder.hps["lr"], learn.recorder.hps["mom"]
    weights = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([weights], lr=5e-4, betas=(0.95, 0.98))
    authors = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-4, epochs=2000, steps_per_epoch=45000 // 4)
    expected = []
    for _ in lrs:
        expected.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"][0]))
        optimizer.step()
        authors.step()
    assert len(lrs) == 6
    assert lrs == pytest.approx([lr for lr, _ in expected], rel=1e-9)
    assert beta1 == pytest.approx([b for _, b in expected], rel=1e-9)
    assert lrs[0] == pytest.approx(5e-4 / 25) and max(lrs) < 1.001 * 5e-4 / 25  # it never leaves warm-up
    assert [group["betas"][1] for group in learn.opt.opt.param_groups] == [0.98]

    profile, learn = small_learner(schedule="one_cycle")  # ours: one cycle over the run, beta1 held
    fit(learn, profile, 2)
    assert learn.recorder.hps["lr"][0] == pytest.approx(5e-4 / 25) and max(learn.recorder.hps["lr"]) > 0.9 * 5e-4
    assert set(learn.recorder.hps["mom"]) == {0.95}


def test_learning_rates_are_those_fit_sets_on_either_schedule():
    from partwhole.method.train import fit, learning_rates

    for schedule in ("reference", "one_cycle"):
        profile, learn = small_learner(schedule=schedule)
        fit(learn, profile, 2)  # 2 epochs of 3 batches
        assert learning_rates(profile, 6) == pytest.approx(learn.recorder.hps["lr"], rel=1e-6)


def test_a_student_overfits_one_batch_and_a_frozen_one_does_not():
    from partwhole.method.train import overfit_one_batch

    profile = get_profile("embedded", image_size=32, grid=4, patch_dim=32, lr=2e-3)
    images, targets = torch.randn(4, 3, 32, 32), torch.randn(4, 16, 3, 32)
    losses = overfit_one_batch(profile, images, targets, 80)
    assert losses[-1] < 0.5 * losses[0]  # random targets, memorised
    frozen = overfit_one_batch(dataclasses.replace(profile, lr=1e-12), images, targets, 5)
    assert frozen[-1] == pytest.approx(frozen[0], rel=1e-3)


def test_speed_options_reach_the_learner_and_keep_the_training(monkeypatch):
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.fp16 import MixedPrecision

    from partwhole.study.profiles import get_profile
    from partwhole.method.train import fit, pretraining_learner

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(12, 16, 3, 32)).astype(np.float16)
    histories = {}
    for fast in (False, True):
        profile = get_profile("embedded", image_size=32, grid=4, patch_dim=32, batch_size=4, pretrain_epochs=1,
                              schedule="one_cycle",
                              precision="bfloat16" if fast else "float32", channels_last=fast, compile=fast)
        learn = pretraining_learner(profile, pixels, targets, np.arange(8), np.arange(8, 12), "cpu")
        has = {type(cb) for cb in learn.cbs}
        assert (MixedPrecision in has, ChannelsLast in has) == (fast, fast)
        histories[fast] = fit(learn, profile, 1)
    assert compiled == ["Distiller"]
    # fastai autocasts on CUDA only, and channels-last changes the layout, not the values
    assert histories[True]["train_loss"] == pytest.approx(histories[False]["train_loss"], rel=1e-4)


@pytest.mark.parametrize("cause", ["targets", "learning rate"])
def test_a_run_whose_loss_turns_non_finite_stops_naming_step_phase_and_cause(tmp_path, cause):
    from partwhole.method.train import NonFiniteLoss, fit, pretraining_learner

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(12, 16, 3, 32)).astype(np.float16)
    lr = 1e30 if cause == "learning rate" else 1e-3  # Lion's steps of 1e30 overflow float32 at the next loss
    if cause == "targets":
        targets[5, 3] = np.nan
    profile = get_profile("embedded", image_size=32, grid=4, patch_dim=32, batch_size=4, pretrain_epochs=1, lr=lr)
    learn = pretraining_learner(profile, pixels, targets, np.arange(8), np.arange(8, 12), "cpu")
    state = tmp_path / "state.pt"
    with pytest.raises(NonFiniteLoss, match=f"distillation pretraining: .* at epoch 0, step \\d+ of 2; .*{cause}"):
        fit(learn, profile, 1, state)
    assert not state.exists()  # nothing written from the failed epoch


def test_a_model_moved_for_inference_can_still_be_trained():
    """Feature extraction runs in inference mode; a model it moves to the GPU there would get inference-tensor
    parameters that no later training can use (BatchNorm's statistics, backward). The meta device stands in."""
    with torch.inference_mode():
        model = frozen_on(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), "meta")
    assert not model.training
    assert all(p.device.type == "meta" and not p.is_inference() for p in model.parameters())
    assert all(not b.is_inference() for b in model.buffers())
