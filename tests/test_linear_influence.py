"""The closed-form influence of the linear head against pyDVL, in float64.

pyDVL's ``DirectInfluence`` (the exact Hessian, inverted) is the reference:
the fast path must give the same average influence, self-influence and
influence matrix to rounding error, by Cholesky and by preconditioned CG.
Data: scikit-learn's digits (real 8x8 scans), ten classes, a few flips.
"""

import numpy as np
import pytest
import torch
from pydvl.influence.torch.functional import hessian
from sklearn.datasets import load_digits

from noise_audit.core import head as heads
from noise_audit.core import influence as infl
from noise_audit.core import linear_influence as lin

L2 = 0.1


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.data - d.data.mean(0)) / (d.data.std(0) + 1e-6)
    y = d.target.copy()
    y[:30] = (y[:30] + 3) % 10  # some flips
    tr, te = np.arange(0, 400), np.arange(400, 500)
    head, hist = heads.fit_head(x[tr], y[tr], 10, L2)
    assert hist["grad_norm"] < 1e-7  # influence assumes a minimum
    return x[tr], y[tr], x[te], y[te], head


@pytest.fixture(scope="module")
def reference(digits):
    x, y, xt, yt, head = digits
    return infl.fit_influence_model(head, x, y, L2, "direct")


def _close(a, b, rtol=1e-9):
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max())


def test_hessian_and_hvp_equal_pydvls(digits):
    x, y, _, _, head = digits
    model = lin.LinearHeadInfluence.from_head(head, L2).fit(x, y)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(heads.as_tensor(x), torch.as_tensor(y)), batch_size=500)
    ref = hessian(head, torch.nn.functional.cross_entropy, data) + L2 * torch.eye(model.n_parameters, dtype=torch.float64)
    # ours is in (C, d + 1) order; pyDVL's flattens weight rows, then bias
    c, d1 = 10, x.shape[1] + 1
    eye = torch.eye(model.n_parameters, dtype=torch.float64)
    perm = lin.to_flat(eye.reshape(-1, c, d1))  # row i: our basis vector i in pyDVL's order
    ours = perm @ ref @ perm.T
    _close(model.hessian().numpy(), ours.numpy(), 1e-12)
    v = torch.randn(3, c, d1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _close(model.hvp(v).reshape(3, -1).numpy(), (v.reshape(3, -1) @ ours).numpy(), 1e-12)


@pytest.mark.parametrize("path", ["cholesky", "pcg"])
def test_influences_equal_pydvl_direct(digits, reference, monkeypatch, path):
    x, y, xt, yt, head = digits
    if path == "pcg":
        monkeypatch.setattr(lin, "FORM_HESSIAN_MAX_PARAMS", 0)
    model = infl.fit_influence_model(head, x, y, L2, "linear")
    assert isinstance(model, lin.LinearHeadInfluence) and (model._chol is None) == (path == "pcg")
    _close(infl.average_influence(model, head, xt, yt, x, y), infl.average_influence(reference, head, xt, yt, x, y))
    _close(infl.influences_on(model, xt[:5], yt[:5], x, y), infl.influences_on(reference, xt[:5], yt[:5], x, y))
    if path == "pcg":
        assert 0 < max(model.cg_iterations) < 50  # EK-FAC preconditioning: a few steps, not hundreds
        # self-influence falls back to EK-FAC above the size where H is formed
        exact = infl.self_influence(reference, x, y)
        assert np.corrcoef(infl.self_influence(model, x, y), exact)[0, 1] > 0.98
        model.exact_self_influence = True
    _close(infl.self_influence(model, x, y), infl.self_influence(reference, x, y))


def test_ekfac_diagonal_is_the_hessians_diagonal_in_the_kronecker_basis(digits):
    x, y, _, _, head = digits
    model = lin.LinearHeadInfluence.from_head(head, L2, solver="ekfac").fit(x, y)
    e = model._ekfac
    basis = torch.kron(e.q_g, e.q_a)  # columns: q_k (x) u_l in (C, d + 1) order
    h = model.hessian() - L2 * torch.eye(model.n_parameters, dtype=torch.float64)
    _close(e.diag.reshape(-1).numpy(), torch.diagonal(basis.T @ h @ basis).numpy(), 1e-12)
    # and ekfac_solve inverts exactly that approximation
    v = torch.randn(2, *e.diag.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    approx = basis @ torch.diag(e.diag.reshape(-1) + L2) @ basis.T
    _close((approx @ model.ekfac_solve(v).reshape(2, -1).T).T.numpy(), v.reshape(2, -1).numpy(), 1e-10)


def test_ekfac_is_close_to_exact_and_closer_than_pydvls(digits, reference):
    x, y, xt, yt, head = digits
    exact_avg = infl.average_influence(reference, head, xt, yt, x, y)
    exact_self = infl.self_influence(reference, x, y)
    ours = lin.LinearHeadInfluence.from_head(head, L2, solver="ekfac").fit(x, y)
    pydvl = infl.fit_influence_model(head, x, y, L2, "ekfac")
    r_ours = np.corrcoef(ours.self_influence(x, y), exact_self)[0, 1]
    r_pydvl = np.corrcoef(infl.self_influence(pydvl, x, y), exact_self)[0, 1]
    assert r_ours > 0.98 and r_ours >= r_pydvl - 1e-3, (r_ours, r_pydvl)
    a_ours = np.corrcoef(ours.average_influence(xt, yt, x, y), exact_avg)[0, 1]
    a_pydvl = np.corrcoef(infl.average_influence(pydvl, head, xt, yt, x, y), exact_avg)[0, 1]
    assert a_ours > 0.97 and a_ours >= a_pydvl - 1e-3, (a_ours, a_pydvl)


def test_auto_is_linear_for_the_linear_head_only(digits):
    *_, head = digits
    assert infl.resolve_method("auto", head) == "linear"
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    assert infl.resolve_method("auto", block) == "direct"
    with pytest.raises(ValueError, match="linear head"):
        infl.resolve_method("linear", block)
