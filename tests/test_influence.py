"""Influence stage on real data (scikit-learn's digits as features), float64."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from noise_audit.core import head as heads
from noise_audit.core import influence as infl


@pytest.fixture(scope="module")
def small_problem():
    d = load_digits(n_class=3)
    x = d.data[:150]
    y = d.target[:150]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = y.copy()
    y[:8] = (y[:8] + 1) % 3  # a few flips
    head, hist = heads.fit_head(x[:120], y[:120], 3, l2=0.1)
    return x[:120], y[:120], x[120:], y[120:], head, hist


def test_head_reaches_a_minimum(small_problem):
    *_, hist = small_problem
    assert hist["grad_norm"] < 1e-6
    assert hist["train_loss"][-1] <= hist["train_loss"][0]


@pytest.mark.parametrize("method", ["direct", "cg", "linear"])
def test_one_solve_average_equals_mean_of_full_matrix(small_problem, method):
    x, y, xt, yt, head, _ = small_problem
    model = infl.fit_influence_model(head, x, y, 0.1, method)
    full = infl.influences_on(model, xt, yt, x, y)
    assert full.shape == (30, 120) and full.dtype == np.float64
    avg = infl.average_influence(model, head, xt, yt, x, y)
    np.testing.assert_allclose(avg, full.mean(0), rtol=1e-6, atol=1e-9 * np.abs(full).max())


def test_self_influence_is_the_diagonal(small_problem):
    x, y, _, _, head, _ = small_problem
    model = infl.fit_influence_model(head, x, y, 0.1, "direct")
    full = infl.influences_on(model, x[:20], y[:20], x[:20], y[:20])
    np.testing.assert_allclose(infl.self_influence(model, x[:20], y[:20]), np.diag(full), rtol=1e-8)
    assert (np.diag(full) > 0).all()  # H is positive definite


def test_approximate_solvers_agree_with_direct(small_problem):
    x, y, xt, yt, head, _ = small_problem
    ref = infl.average_influence(infl.fit_influence_model(head, x, y, 0.1, "direct"), head, xt, yt, x, y)
    for method in ("ekfac", "arnoldi", "nystroem", "lissa"):
        model = infl.fit_influence_model(head, x, y, 0.1, method, rank=60)
        est = infl.average_influence(model, head, xt, yt, x, y)
        assert np.corrcoef(ref, est)[0, 1] > 0.8, method


def test_auto_picks_direct_for_small_heads_and_ekfac_for_large(small_problem):
    *_, head, _ = small_problem
    assert infl.resolve_method("auto", head) == "linear"  # the closed form, whatever the size
    small = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    assert infl.resolve_method("auto", small) == "direct"
    big = torch.nn.Sequential(torch.nn.Linear(1280, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    assert infl.resolve_method("auto", big) == "ekfac"
    with pytest.raises(ValueError):
        infl.resolve_method("magic", head)


@pytest.mark.parametrize("method", ["direct", "linear"])
def test_positive_average_influence_means_helpful(small_problem, method):
    """Removing the most helpful sample raises the test loss more than removing the most harmful."""
    x, y, xt, yt, head, _ = small_problem
    model = infl.fit_influence_model(head, x, y, 0.1, method)
    avg = infl.average_influence(model, head, xt, yt, x, y)

    def test_loss_without(i):
        keep = np.arange(len(y)) != i
        h, _ = heads.fit_head(x[keep], y[keep], 3, 0.1)
        return torch.nn.functional.cross_entropy(h(heads.as_tensor(xt)), torch.as_tensor(yt)).item()

    base = torch.nn.functional.cross_entropy(head(heads.as_tensor(xt)), torch.as_tensor(yt)).item()
    assert test_loss_without(int(avg.argmax())) > base > test_loss_without(int(avg.argmin()))
