import numpy as np
import torch

from partwhole.study import efficiency


def subsets(seed=0):
    labels = np.repeat(np.arange(4), 25)  # 4 classes of 25 train images
    fit_idx = np.random.default_rng(1).permutation(100)[:80]
    return fit_idx, labels, efficiency.labelled_subsets(fit_idx, labels, (0.01, 0.1, 0.5, 1.0), seed)


def test_subsets_are_nested_class_balanced_seeded_and_inside_the_fit_set():
    fit_idx, labels, chosen = subsets()
    assert list(chosen) == [0.01, 0.1, 0.5, 1.0]
    for smaller, larger in zip(list(chosen.values()), list(chosen.values())[1:]):
        assert set(smaller) < set(larger)
    assert set(chosen[1.0]) == set(fit_idx)
    assert all(set(s) <= set(fit_idx) for s in chosen.values())
    per_class = {c: np.sum(labels[fit_idx] == c) for c in range(4)}
    for fraction, subset in chosen.items():
        counts = np.bincount(labels[subset], minlength=4)
        assert all(counts[c] == max(1, round(fraction * per_class[c])) for c in range(4))
    again = subsets()[2]
    assert all(np.array_equal(again[f], chosen[f]) for f in chosen)
    other = subsets(seed=1)[2]
    assert not np.array_equal(other[0.1], chosen[0.1])


def test_subset_features_are_the_rows_of_the_subset_with_its_repeats():
    fit_idx = np.array([7, 3, 9, 1])
    features = {"fit": (torch.arange(4.0)[:, None], torch.tensor([0, 1, 0, 1])), "val": (torch.zeros(2, 1), None)}
    cut = efficiency.subset_features(features, fit_idx, efficiency.repeated(np.array([1, 9]), len(fit_idx)))
    assert cut["fit"][0][:, 0].tolist() == [3.0, 2.0, 3.0, 2.0] and cut["fit"][1].tolist() == [1, 0, 1, 0]
    assert cut["val"] is features["val"]


def test_a_repeated_subset_has_the_fit_sets_length_and_only_its_own_images_evenly():
    subset = np.array([4, 8, 15])
    longer = efficiency.repeated(subset, 80)
    assert len(longer) == 80 and set(longer) == set(subset)
    assert np.bincount(longer).max() - np.bincount(longer)[subset].min() <= 1  # each image 26 or 27 times
    assert np.array_equal(efficiency.repeated(subset, 2), subset)  # never cut below the subset


def test_table_rows_give_each_method_its_accuracy_and_steps():
    curves = {"a": {0.1: {"val": 0.5, "images": 8, "steps": 3}, 1.0: {"val": 0.9, "images": 80, "steps": 30}},
              "b": {1.0: {"val": 0.2, "images": 80, "steps": 10}}}
    assert efficiency.table_rows(curves) == [["10%", 8, "50.0% (3 steps)", ""],
                                             ["100%", 80, "90.0% (30 steps)", "20.0% (10 steps)"]]
