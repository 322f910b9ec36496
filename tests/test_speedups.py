"""Each speed switch against the reference it replaces, on tiny random models; each check shown able to fail."""
import copy

import pytest
import torch
from lion_pytorch import Lion

from partwhole.method.model import Agglomerator, AgglomeratorConfig, Distiller
from partwhole.method.sam import build_tiny_sam
from partwhole.method.speedups import ForeachLion, checkpoint_iterations, set_sam_attention


def test_sam_attention_through_sdpa_equals_segment_anythings_within_float_rounding():
    sam = build_tiny_sam(seed=1, input_size=256)
    for block in sam.image_encoder.blocks:  # SAM's relative positions start at zero: give them values to test
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    images = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        reference = sam.image_encoder(images)
        fused = set_sam_attention(sam, "sdpa").image_encoder(images)
        undone = set_sam_attention(sam, "reference").image_encoder(images)
    assert torch.allclose(fused, reference, atol=1e-5, rtol=1e-4)  # tolerance: float32 rounding
    assert torch.equal(undone, reference)
    # the comparison can fail: the same SDPA without the relative positions is far from the reference
    for block in sam.image_encoder.blocks:
        block.attn.use_rel_pos = False
    with torch.inference_mode():
        without_positions = set_sam_attention(sam, "sdpa").image_encoder(images)
    assert not torch.allclose(without_positions, reference, atol=1e-3)
    with pytest.raises(ValueError, match="sam_attention='flash'"):
        set_sam_attention(sam, "flash")


def tiny_distiller(seed=0):
    torch.manual_seed(seed)
    cfg = AgglomeratorConfig(image_size=32, grid=4, patch_dim=16, target_dim=16)
    return Distiller(Agglomerator(cfg)), cfg


def gradients(model, images, targets):
    model.zero_grad()
    loss = torch.nn.functional.mse_loss(model(images), targets)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_checkpointed_iterations_give_the_same_loss_and_gradients():
    model, cfg = tiny_distiller()
    images = torch.randn(4, 3, 32, 32)
    targets = torch.randn(4, cfg.n_columns, cfg.levels, cfg.target_dim)
    loss, grads = gradients(model, images, targets)
    copied = copy.deepcopy(model)
    checkpoint_iterations(model.backbone)
    checkpointed_loss, checkpointed_grads = gradients(model, images, targets)
    assert checkpointed_loss == pytest.approx(loss, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(checkpointed_grads, grads))
    # a copy of a checkpointed model recomputes its own steps (its weights, not the original's)
    twin = copy.deepcopy(model)
    assert twin.backbone.step.__self__ is twin.backbone
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.mul_(1.5)
    assert gradients(twin, images, targets)[0] != pytest.approx(loss, rel=1e-2)  # the measure can fail
    assert gradients(model, images, targets)[0] == pytest.approx(loss, rel=1e-6)  # the original's weights untouched
    assert gradients(copied, images, targets)[0] == pytest.approx(loss, rel=1e-6)


def test_foreach_lion_takes_lion_pytorchs_steps():
    trajectories = {}
    for name, optimizer_class in (("lion", Lion), ("foreach", ForeachLion)):
        model, cfg = tiny_distiller(seed=3)
        optimizer = optimizer_class(model.parameters(), lr=1e-3, betas=(0.95, 0.98), weight_decay=0.075)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            images = torch.randn(4, 3, 32, 32, generator=generator)
            targets = torch.randn(4, cfg.n_columns, cfg.levels, cfg.target_dim, generator=generator)
            gradients(model, images, targets)
            optimizer.step()
        trajectories[name] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(trajectories["foreach"], trajectories["lion"]))
    start, _ = tiny_distiller(seed=3)  # three steps moved the weights, so equality above is not trivial
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(start.parameters(), trajectories["lion"]))
    with pytest.raises(ValueError, match="lr > 0"):
        ForeachLion(start.parameters(), lr=0.0)


def test_the_profile_switches_reach_the_models():
    import numpy as np

    from partwhole.method.embedder import MaskEmbedder
    from partwhole.study.profiles import SettingsError, get_profile
    from partwhole.method.sam import SamTeacher
    from partwhole.method.train import pretraining_learner

    tiny = dict(teacher="sam", sam_model="tiny", random_weights=True)
    for kind in ("reference", "sdpa"):
        teacher = SamTeacher.from_profile(get_profile("embedded", sam_attention=kind, **tiny), "cpu")
        attention = teacher.sam.image_encoder.blocks[0].attn
        assert ("forward" in attention.__dict__) == (kind == "sdpa")
    profile = get_profile("embedded", embedder_batch=7)
    assert MaskEmbedder.from_profile(profile, "cpu").batches.size == 7
    assert MaskEmbedder.from_profile(get_profile("embedded"), "cpu").batches.size == profile.teacher_batch
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(6, 16, 3, 32)).astype(np.float16)
    for on in (False, True):
        profile = get_profile("embedded", image_size=32, grid=4, patch_dim=32, batch_size=3, checkpoint_iterations=on,
                              foreach_optimizer=on)
        learn = pretraining_learner(profile, pixels, targets, np.arange(4), np.arange(4, 6), "cpu")
        assert ("step" in learn.model.backbone.__dict__) == on
        learn.create_opt()
        assert isinstance(learn.opt.opt, ForeachLion) == on
    with pytest.raises(SettingsError, match="sam_attention"):
        get_profile("embedded", sam_attention="flash")
