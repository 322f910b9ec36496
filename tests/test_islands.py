import numpy as np
import pytest
import torch

from partwhole.analysis.islands import (
    adjusted_rand_index,
    cluster_columns,
    column_levels,
    connected_components,
    fit_level_projections,
    fit_projection,
    island_agreement,
    island_matrix,
    islands_figure,
    island_scores,
    islands_table,
    level_colours,
    mask_partition,
)
from partwhole.method.model import Agglomerator, AgglomeratorConfig
from partwhole.datasets.synthetic import hierarchy_path, make_scene
from partwhole.method.prompts import point_grid
from partwhole.method.teachers import GroundTruthTeacher


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


# island metric


def test_adjusted_rand_index_matches_known_values():
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx(0.5714285714)  # sklearn's docs
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
    assert adjusted_rand_index([0, 1, 2], [5, 6, 7]) == 1.0  # both all singletons


def test_adjusted_rand_index_perfect_swapped_and_random():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, size=2000)
    assert adjusted_rand_index(truth, truth) == 1.0
    assert adjusted_rand_index(truth, (truth + 2) % 5 + 10) == 1.0  # the same groups under other names
    random = [adjusted_rand_index(truth, rng.integers(0, 5, size=truth.size)) for _ in range(20)]
    assert abs(np.mean(random)) < 0.01 and max(np.abs(random)) < 0.02
    merged = np.where(truth == 4, 3, truth)  # one group merged into another: partly right
    assert 0.5 < adjusted_rand_index(truth, merged) < 1.0


def blobs(sizes, d=16, spread=0.05, seed=0):
    """Vectors around len(sizes) random directions, in shuffled order, with their true group."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    centres = rng.normal(size=(len(sizes), d))
    return centres[truth] + spread * rng.normal(size=(len(truth), d)), truth


def test_clustering_finds_separated_groups_and_is_deterministic():
    x, truth = blobs([20, 7, 3, 1])
    labels = cluster_columns(x, 4)
    assert adjusted_rand_index(labels, truth) == 1.0
    assert np.array_equal(labels, cluster_columns(x.copy(), 4))
    assert np.array_equal(labels, cluster_columns(3.0 * x, 4))  # cosine: the scale of the vectors does not matter
    assert len(np.unique(cluster_columns(x, 2))) == 2
    assert len(np.unique(cluster_columns(x[:3], 10))) == 3  # k capped to the number of vectors
    noise = np.random.default_rng(1).normal(size=(len(x), 16))
    assert abs(adjusted_rand_index(cluster_columns(noise, 4), truth)) < 0.3


def test_connected_components_follow_chains():
    adjacency = np.zeros((6, 6), dtype=bool)
    for i, j in [(5, 3), (3, 1), (1, 4)]:  # a chain 5-3-1-4; 0 and 2 alone
        adjacency[i, j] = adjacency[j, i] = True
    assert connected_components(adjacency).tolist() == [0, 1, 2, 1, 1, 1]


def test_mask_partition_of_the_ground_truth_teacher_is_the_true_hierarchy(tmp_path):
    size, grid = 64, 8
    image, hierarchy = make_scene(seed=0, split="train", class_name="face", index=0, image_size=size)
    path = tmp_path / "face_0000.png"
    np.save(hierarchy_path(path), hierarchy)
    masks = GroundTruthTeacher(size, grid)(image, path)
    points = point_grid(size, grid)
    partition = mask_partition(masks, points)
    cols, rows = points.astype(int).T
    truth = hierarchy[:, rows, cols]  # the label under every patch centre, per level
    assert partition.shape == (3, grid * grid)
    assert [adjusted_rand_index(p, t) for p, t in zip(partition, truth)] == [1.0, 1.0, 1.0]
    assert [len(np.unique(p)) for p in partition] == [len(np.unique(t)) for t in truth]
    assert len(np.unique(partition[0])) > len(np.unique(partition[2]))  # more subparts than wholes


def test_mask_partition_needs_mutual_containment():
    points = np.array([[0, 0], [1, 0], [2, 0]])  # (x, y): three pixels of one row
    masks = np.zeros((3, 1, 1, 3), dtype=bool)
    masks[0, 0] = masks[1, 0] = [True, True, True]  # points 0 and 1 see the whole row as their segment ...
    masks[2, 0] = [False, False, True]  # ... point 2 sees only itself: it contains no one, so it stays apart
    assert mask_partition(masks, points).tolist() == [[0, 0, 1]]


def test_island_scores_per_level():
    (a, truth_a), (b, truth_b) = blobs([10, 6]), blobs([4, 4, 8], seed=1)
    levels = np.stack([a, b], axis=1)[None]  # one image, 16 columns, level 0 = a, level 1 = b
    references = np.stack([truth_a, truth_b])[None]
    assert island_scores(levels, references).tolist() == [1.0, 1.0]
    assert island_scores(levels, references[:, ::-1])[0] < 0.5  # level 0 scored against level 1's groups


def test_islands_table_has_a_row_per_model_and_a_column_per_level():
    record = {"profile": "embedded", "device": "CPU", "seed": 42, "git_commit": "abc", "images": 100, "split": "val",
              "reference": "ground-truth teacher's masks",
              "islands": {"SAM pre-training": {"run": "pretrained-crop_none", "ari": [0.5, 0.25, 0.125]},
                          "no pretraining": {"run": None, "ari": [0.0, 0.0, 0.0]}}}
    table = islands_table([record]).splitlines()
    assert "level 2 (whole)" in table[2]
    assert table[4].startswith("| SAM pre-training | 0.500 | 0.250 | 0.125 | measured: embedded")
    assert table[5].startswith("| no pretraining | 0.000 |") and len(table) == 6
    again = record | {"seed": 43, "islands": {name: {"run": None, "ari": [a + 0.5 for a in entry["ari"]]}
                                              for name, entry in record["islands"].items()}}
    pooled = islands_table([record, again]).splitlines()  # two seeds: mean ± sample standard deviation
    assert pooled[4].startswith("| SAM pre-training | 0.750 ± 0.354 (n=2) | 0.500 ± 0.354 (n=2) |")
    assert "seeds 42, 43" in pooled[4]


def test_island_matrix_finds_a_level_that_draws_another_levels_islands():
    """Model level 0 draws the reference's wholes, level 2 its subparts, level 1 nothing: the matrix says so and
    its diagonal is island_scores."""
    rng = np.random.default_rng(0)
    subparts, wholes = np.repeat(np.arange(4), 4), np.repeat(np.arange(2), 8)
    references = np.stack([subparts, np.repeat(np.arange(3), 6)[:16], wholes])[None]  # (1 image, 3 levels, 16 points)
    directions = np.eye(8)
    levels = np.stack([directions[wholes], rng.normal(size=(16, 8)), directions[subparts + 2]], axis=1)[None]
    matrix = island_matrix(levels, references)
    assert matrix.shape == (3, 3)
    assert matrix[0, 2] == pytest.approx(1.0) and matrix[2, 0] == pytest.approx(1.0)
    assert matrix[0, 0] < 1.0 and matrix[2, 2] < 1.0
    assert np.array_equal(island_scores(levels, references), np.diag(matrix))
