import fiftyone as fo
import numpy as np
import pytest

import noise_audit as na
from noise_audit.noise import choose_flips


def test_choose_flips_is_deterministic_and_exact():
    labels = np.repeat(np.arange(4), 50)
    a = choose_flips(labels, 4, 0.1, "uniform", seed=3)
    b = choose_flips(labels, 4, 0.1, "uniform", seed=3)
    c = choose_flips(labels, 4, 0.1, "uniform", seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert len(a[0]) == 20 and np.all(labels[a[0]] != a[1])


def test_pair_noise_sends_each_class_to_one_partner():
    labels = np.repeat(np.arange(5), 40)
    idx, new = choose_flips(labels, 5, 0.2, "pair", seed=0)
    partners = {int(labels[i]): set() for i in idx}
    for i, n in zip(idx, new):
        partners[int(labels[i])].add(int(n))
    assert all(len(p) == 1 for p in partners.values())
    assert len({next(iter(p)) for p in partners.values()}) == 5  # a permutation
    assert all((labels[idx] == c).sum() == 8 for c in range(5))


def test_influential_noise_flips_the_most_helpful_samples_per_class():
    labels = np.repeat([0, 1], 10)
    influence = np.arange(20, dtype=float)
    idx, _ = choose_flips(labels, 2, 0.2, "influential", seed=0, influence=influence)
    assert idx.tolist() == [8, 9, 18, 19]


def test_inject_writes_a_noisy_copy_and_never_touches_the_original(make_small_dataset):
    ds = make_small_dataset()
    before = ds.values("ground_truth.label")
    train = ds.match_tags("train")
    out = na.inject_label_noise(train, fraction=0.2, seed=1)
    assert out["num_flipped"] == 24 and out["noisy_field"] == "ground_truth_noisy"
    assert ds.values("ground_truth.label") == before
    noisy, flags, tags = ds.values(["ground_truth_noisy.label", "label_flipped", "tags"])
    assert all((n != b) == f for n, b, f in zip(noisy, before, flags))
    assert not any(f for f, t in zip(flags, tags) if "val" in t)  # only the view is flipped
    assert sorted(ds.match(fo.ViewField("label_flipped")).values("id")) == out["flipped_ids"]

    again = na.inject_label_noise(train, fraction=0.2, seed=1)  # our own field: may rewrite
    assert again["flipped_ids"] == out["flipped_ids"]
    other = na.inject_label_noise(train, fraction=0.2, seed=2)
    assert other["flipped_ids"] != out["flipped_ids"]


def test_inject_refuses_to_overwrite_a_users_field(make_small_dataset):
    ds = make_small_dataset(n_train=5, n_val=0)
    ds.clone_sample_field("ground_truth", "mine")
    with pytest.raises(na.NoiseAuditError, match="not created by noise-audit"):
        na.inject_label_noise(ds, noisy_field="mine")
    assert "label_flipped" not in ds.get_field_schema()
    with pytest.raises(na.NoiseAuditError, match="strategy"):
        na.inject_label_noise(ds, strategy="bogus")
