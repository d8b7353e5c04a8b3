"""Issue 24 item 5: the estimates a reviewer plans with (noise_audit.core.review_stats)."""

import numpy as np
import pytest

from noise_audit.core.review_stats import class_difficulty, expected_count, review_estimates


def poisson_binomial(p):
    """The exact distribution of the number of successes of independent Bernoulli(p_i) (by convolution)."""
    dist = np.array([1.0])
    for q in p:
        dist = np.convolve(dist, [1 - q, q])
    return dist


def test_the_interval_is_the_poisson_binomial_mean_and_variance():
    p = np.random.default_rng(0).beta(0.5, 4, size=400)
    exact = poisson_binomial(p)
    k = np.arange(len(exact))
    mean, var = (k * exact).sum(), ((k - (k * exact).sum()) ** 2 * exact).sum()
    e = expected_count(p)
    assert e["expected"] == pytest.approx(mean) and e["sd"] == pytest.approx(np.sqrt(var))
    inside = exact[(k >= e["low"]) & (k <= e["high"])].sum()
    assert 0.93 < inside < 0.97  # a 95% interval (normal approximation)
    assert expected_count(np.zeros(5)) == {"expected": 0.0, "sd": 0.0, "low": 0.0, "high": 0.0}
    assert expected_count(np.ones(3))["high"] == 3.0


def test_difficulty_is_the_held_out_error_of_each_class():
    assert class_difficulty([[8, 2, 0], [1, 9, 0], [0, 0, 0]], 3) == [pytest.approx(0.2), pytest.approx(0.1), None]
    assert class_difficulty(None, 2) == [None, None]


def test_the_review_counts_confirmed_errors_precision_and_what_is_left():
    classes = ["a", "b"]
    ids = [f"s{i}" for i in range(8)]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.05, 0.5, 0.3])
    is_test = np.array([False] * 6 + [True, True])
    decided = {
        "s0": {"decision": "accept", "label": "b", "given": "a"},   # confirmed
        "s1": {"decision": "keep", "label": "a", "given": "a"},     # kept
        "s4": {"decision": "relabel", "label": "a", "given": "b"},  # confirmed
        "s5": {"decision": "unsure", "label": None, "given": "b"},  # undecided
        "s6": {"decision": "accept", "label": "a", "given": "b"},   # held-out: not counted, reported
        "s2": {"decision": "accept", "label": "a", "given": "a"},   # a suggestion equal to the given label: kept
    }
    e = review_estimates(scores, labels, is_test, classes, ids, decided, [[1, 0], [1, 1]])
    counted = scores[:6]
    assert e["n_samples"] == 6 and e["errors"]["expected"] == pytest.approx(counted.sum())
    r = e["review"]
    assert (r["reviewed"], r["decided"], r["confirmed_errors"], r["kept"], r["unsure"]) == (5, 4, 2, 2, 1)
    assert r["precision"] == 0.5 and r["expected_precision"] == pytest.approx(np.mean([0.9, 0.8, 0.1, 0.7]))
    left = scores[[3, 5]]  # undecided among the counted: s3 (unreviewed) and s5 (unsure)
    assert r["errors_left"]["expected"] == pytest.approx(left.sum())
    assert r["estimated_errors_after"]["expected"] == pytest.approx(2 + left.sum())
    assert r["reviewed_held_out"] == 1
    a, b = e["per_class"]
    assert a["noise_rate"] == pytest.approx(np.mean([0.9, 0.8, 0.1, 0.2])) and a["confirmed_errors"] == 1
    assert b["n"] == 2 and b["noise_rate"] == pytest.approx(np.mean([0.7, 0.05])) and b["difficulty"] == 0.5
    assert a["difficulty"] == 0.0
