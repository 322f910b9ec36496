import pytest
import torch

from partwhole.method.model import (
    Agglomerator,
    AgglomeratorConfig,
    Classifier,
    ColumnMLP,
    Distiller,
    SELF_SIMILARITY,
    ProbeHead,
    consensus_attention,
    count_parameters,
    parameter_counts,
    top_level_features,
)
from partwhole.method.train import classifier

TINY = AgglomeratorConfig(image_size=32, grid=4, patch_dim=32, levels=3, target_dim=32)


def test_shapes_through_the_network():
    model = Agglomerator(TINY)
    images = torch.randn(2, 3, 32, 32)
    assert model.tokens(images).shape == (2, 16, 32)  # 32 px -> 8x8 map -> 4x4 columns of 2x2 cells x 8 channels
    assert model(images).shape == (2, 16, 3, 32)
    assert TINY.n_iters == 6


def test_paper_configuration_parameter_counts():
    """Computed from the architecture the reference code builds (paper: 3.2 M without encoder, 14.2 M with)."""
    counts = parameter_counts(AgglomeratorConfig())
    assert counts == {"backbone": 2_632_188, "levels_encoder": 0, "head": 602_634, "total": 3_234_822}
    with_encoder = parameter_counts(AgglomeratorConfig(levels_encoder=True))
    assert with_encoder["levels_encoder"] == 7_875_872
    assert with_encoder["total"] == 11_110_694


def test_column_mlp_is_one_independent_mlp_per_level():
    mlp = ColumnMLP(dim=8, groups=3, n_columns=5, widths=(16, 8), activation=torch.nn.GELU).eval()
    x = torch.randn(2, 5, 3, 8)
    changed = x.clone()
    changed[:, :, 1] += torch.randn(2, 5, 8)  # touch level 1 only (not uniformly: LayerNorm over columns would undo that)
    out, out_changed = mlp(x), mlp(changed)
    assert torch.allclose(out[:, :, 0], out_changed[:, :, 0]) and torch.allclose(out[:, :, 2], out_changed[:, :, 2])
    assert not torch.allclose(out[:, :, 1], out_changed[:, :, 1])


def test_consensus_attention_replaces_self_similarity_by_a_constant():
    levels = torch.zeros(1, 3, 1, 2)
    levels[0, 0, 0] = torch.tensor([100.0, 0.0])  # a loud column: left alone it would attend only to itself
    levels[0, 1, 0] = torch.tensor([0.0, 1.0])
    levels[0, 2, 0] = torch.tensor([0.0, 1.0])
    out = consensus_attention(levels)
    assert SELF_SIMILARITY == -5e-4  # the original Agglomerator's TOKEN_ATTEND_SELF_VALUE; notebook 03 writes it out by name
    # column 0's similarities: itself SELF_SIMILARITY, the others 0 (orthogonal keys)
    weights = torch.softmax(torch.tensor([SELF_SIMILARITY, 0.0, 0.0]), dim=0)
    expected = weights[0] * levels[0, 0, 0] + (weights[1] + weights[2]) * torch.tensor([0.0, 1.0])
    assert torch.allclose(out[0, 0, 0], expected, atol=1e-5)


def test_distiller_needs_matching_target_size_without_encoder():
    with pytest.raises(ValueError, match="patch_dim"):
        Distiller(Agglomerator(AgglomeratorConfig(image_size=32, grid=4, patch_dim=32, target_dim=48)))
    encoded = Distiller(Agglomerator(AgglomeratorConfig(image_size=32, grid=4, patch_dim=32, target_dim=48, levels_encoder=True)))
    assert encoded(torch.randn(2, 3, 32, 32)).shape == (2, 16, 3, 48)


def test_grid_must_tile_the_feature_map():
    with pytest.raises(ValueError, match="divisible"):
        Agglomerator(AgglomeratorConfig(image_size=32, grid=3))


def test_classifier_equals_head_on_cached_features():
    """The probe trains the head on precomputed features; the assembled classifier must give the same outputs."""
    backbone = Agglomerator(TINY).eval()
    head = ProbeHead(TINY.n_columns, TINY.patch_dim, TINY.n_classes).eval()
    images = torch.randn(3, 3, 32, 32)
    expected = head(top_level_features(backbone(images)))
    model = classifier(backbone, head)
    model.train()  # the backbone must stay frozen and in eval mode even then
    assert not model.backbone.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    model.eval()
    assert torch.allclose(model(images), expected, atol=1e-6)
    assert count_parameters(model.head) == count_parameters(head)


def test_a_classifier_is_built_on_its_backbones_device():
    """A probed classifier assembled around a backbone on the GPU must run there (no head left on the CPU); the
    meta device stands in for the GPU on any machine."""
    backbone = Agglomerator(TINY).to("meta")
    model = Classifier(backbone)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model(torch.empty(2, 3, 32, 32, device="meta")).device.type == "meta"


def test_one_iteration_averages_the_four_contributions_level_by_level():
    """Paper Eq.: each level's new value is the weighted sum of (previous, bottom-up, top-down, consensus) divided by
    the number of contributions it has: 4, or 3 for the top level, which has no level above."""
    model = Agglomerator(TINY)
    tokens = model.tokens(torch.randn(2, 3, 32, 32))
    levels = torch.randn(2, TINY.n_columns, TINY.levels, TINY.patch_dim)
    parts = model.contributions(tokens, levels)
    assert list(parts) == ["previous", "bottom_up", "top_down", "consensus"]
    assert all(p.shape == levels.shape for p in parts.values())
    assert parts["top_down"][:, :, -1].abs().max() == 0
    with torch.no_grad():
        model.contribution_weights.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # only the previous value
    step = model.step(tokens, levels)
    assert torch.allclose(step[:, :, :-1], levels[:, :, :-1] / 4) and torch.allclose(step[:, :, -1], levels[:, :, -1] / 3)
    images = torch.randn(2, 3, 32, 32)
    tokens = model.tokens(images)
    iterated = model.initial_levels(tokens)
    for _ in range(TINY.n_iters):
        iterated = model.step(tokens, iterated)
    assert torch.equal(iterated, model(images))  # the forward pass is these steps, from the learnt initial levels
