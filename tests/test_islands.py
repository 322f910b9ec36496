import numpy as np
import pytest
import torch

from partwhole.islands import (
    column_levels,
    fit_level_projections,
    fit_projection,
    island_agreement,
    islands_figure,
    level_colours,
)
from partwhole.model import Agglomerator, AgglomeratorConfig


def data(n=50, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.linspace(3, 0.5, d)  # distinct variances: well-defined components


def test_projection_is_deterministic_and_in_unit_range():
    x = data()
    a, b = fit_projection(x), fit_projection(x.copy())
    assert np.array_equal(a(x), b(x))
    colours = a(x)
    assert colours.shape == (50, 3) and colours.min() == 0.0 and colours.max() == 1.0
    assert (a(10 * x) >= 0).all() and (a(10 * x) <= 1).all()  # far outside the fitted range: clipped


def test_projection_does_not_depend_on_svd_signs(monkeypatch):
    x = data()
    reference = fit_projection(x)
    assert np.allclose(fit_projection(x[np.random.default_rng(1).permutation(len(x))])(x), reference(x))

    svd = np.linalg.svd

    def flipped(a, **kwargs):
        u, s, vt = svd(a, **kwargs)
        signs = np.where(np.arange(len(s)) % 2, 1.0, -1.0)
        return u * signs, s, vt * signs[:, None]

    monkeypatch.setattr(np.linalg, "svd", flipped)
    assert np.allclose(fit_projection(x)(x), reference(x))


def test_identical_columns_share_a_colour_and_different_ones_do_not():
    rng = np.random.default_rng(0)
    levels = rng.normal(size=(2, 16, 3, 8))  # (images, 4 x 4 columns, levels, dim)
    levels[1, 5] = levels[0, 3]  # the same vectors in another image and column
    colours = level_colours(levels, fit_level_projections(levels))
    assert colours.shape == (2, 3, 4, 4, 3)
    assert ((colours >= 0) & (colours <= 1)).all()
    assert np.array_equal(colours[1, :, 1, 1], colours[0, :, 0, 3])  # column 5 is (row 1, col 1), 3 is (0, 3)
    assert np.abs(colours[0, :, 0, 0] - colours[0, :, 0, 3]).max() > 0.05


def test_degenerate_data_gives_constant_colours():
    colours = fit_projection(np.ones((4, 5)))(np.ones((2, 5)))
    assert colours.shape == (2, 3) and np.isfinite(colours).all()


def test_island_agreement_is_one_for_the_same_islands_and_low_for_unrelated():
    rng = np.random.default_rng(0)
    islands = rng.normal(size=(2, 1, 3, 8)).repeat(16, axis=1)  # one vector per image and level...
    islands[:, 8:] = rng.normal(size=(2, 1, 3, 8))  # ...and a second island on half the columns
    same = island_agreement(islands + 0.01 * rng.normal(size=islands.shape), islands)
    assert same.shape == (3,) and (same > 0.99).all()
    assert (np.abs(island_agreement(rng.normal(size=islands.shape), islands)) < 0.5).all()


def test_column_levels_and_figure_of_a_small_agglomerator():
    cfg = AgglomeratorConfig(image_size=32, grid=4, patch_dim=32, target_dim=32)
    torch.manual_seed(0)
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    levels = column_levels(Agglomerator(cfg), pixels, "cpu")
    assert levels.shape == (2, 16, 3, 32) and levels.dtype == np.float32
    colours = level_colours(levels, fit_level_projections(levels))
    fig = islands_figure(pixels, {"student": colours, "teacher target": colours})
    assert len(fig.axes) == 2 * 7
    assert fig.axes[1].get_title() == "student\nlevel 0 (subpart)"
    assert fig.axes[6].get_title() == "teacher target\nlevel 2 (whole)"


def test_non_square_column_count_is_refused():
    with pytest.raises(ValueError, match="square"):
        level_colours(np.zeros((1, 6, 3, 4)), fit_level_projections(np.random.default_rng(0).normal(size=(1, 6, 3, 4))))
