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


@pytest.fixture(scope="module")
def tiny_problem():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4))
    y = np.argmax(x[:, :3] + rng.normal(scale=0.8, size=(40, 3)), axis=1)
    head, hist = heads.fit_head(x[:30], y[:30], 3, 0.1)
    assert hist["grad_norm"] < 1e-6
    return x[:30], y[:30], x[30:], y[30:], head


def _explicit_influences(head, l2, x, y, x_test, y_test):
    """``g_t^T H^{-1} g_z`` with H formed and inverted in numpy: mean cross-entropy Hessian + l2 I.

    Parameters in pyDVL's order: the weight's rows, then the bias.
    """
    w, b = head.fc.weight.detach().numpy(), head.fc.bias.detach().numpy()
    c, d = w.shape

    def parts(x, y):
        a = np.hstack([x, np.ones((len(x), 1))])
        z = a @ np.hstack([w, b[:, None]]).T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return a, p, p - np.eye(c)[y]

    def flat(outer):  # (n, C, d + 1) -> (n, C d + C) in pyDVL's order
        return np.concatenate([outer[:, :, :d].reshape(len(outer), -1), outer[:, :, d]], axis=1)

    a, p, r = parts(x, y)
    g = flat(np.einsum("nc,nk->nck", r, a))
    eye = np.eye(c * (d + 1))
    # H = mean_n (diag(p) - p p^T) (x) a a^T, assembled column by column in pyDVL's order
    h = np.zeros_like(eye)
    for j, e in enumerate(eye):
        v = np.hstack([e[: c * d].reshape(c, d), e[c * d :, None]])  # (C, d + 1)
        s = a @ v.T  # (n, C): the directional change of the logits
        dz = p * s - p * (p * s).sum(1, keepdims=True)  # softmax Jacobian times s
        h[:, j] = flat(np.einsum("nc,nk->nck", dz, a)).mean(0)
    h += l2 * eye
    at, pt, rt = parts(x_test, y_test)
    gt = flat(np.einsum("nc,nk->nck", rt, at))
    h_inv = np.linalg.inv(h)
    return gt @ h_inv @ g.T, np.einsum("ij,jk,ik->i", g, h_inv, g)


@pytest.mark.parametrize("method", ["direct", "cg", "ekfac", "linear"])
def test_influences_equal_an_explicit_hessian_inverse(tiny_problem, method):
    """Against ``H^{-1}`` formed and inverted independently (EK-FAC, an approximation: only close)."""
    x, y, xt, yt, head = tiny_problem
    full_ref, self_ref = _explicit_influences(head, 0.1, x, y, xt, yt)
    model = infl.fit_influence_model(head, x, y, 0.1, method)
    full = infl.influences_on(model, xt, yt, x, y)
    avg = infl.average_influence(model, head, xt, yt, x, y)
    own = infl.self_influence(model, x, y)
    if method == "ekfac":  # an approximation of H: close, not equal
        assert np.corrcoef(full.ravel(), full_ref.ravel())[0, 1] > 0.9
        return
    tol = 1e-7 if method == "cg" else 1e-10
    for ours, ref in ((full, full_ref), (avg, full_ref.mean(0)), (own, self_ref)):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=tol * np.abs(ref).max())


def _fit_and_solve(head, x, y, xt, yt, method):
    model = infl.fit_influence_model(head, x, y, 0.1, method, rank=10)
    return (
        infl.average_influence(model, head, xt, yt, x, y),
        infl.self_influence(model, x, y),
        infl.solve(model, infl.mean_gradient(head, xt, yt)[None]) if method != "linear" else None,
    )


@pytest.mark.parametrize("method", ["direct", "cg", "arnoldi", "nystroem", "ekfac", "linear"])
def test_default_dtype_is_left_alone(tiny_problem, method):
    x, y, xt, yt, head = tiny_problem
    assert torch.get_default_dtype() == torch.float32
    avg, own, solved = _fit_and_solve(head, x, y, xt, yt, method)
    assert torch.get_default_dtype() == torch.float32
    assert avg.dtype == own.dtype == np.float64
    assert solved is None or solved.dtype == torch.float64


@pytest.mark.parametrize("method", ["ekfac", "direct"])
def test_an_audit_thread_does_not_change_the_main_threads_dtype(tiny_problem, method):
    """The App's plugin runs audits in a thread: the main thread's tensors keep torch's default dtype."""
    import threading
    import time

    x, y, xt, yt, head = tiny_problem
    done, results, errors = threading.Event(), [], []

    def audit():
        try:
            for _ in range(5):
                results.append(_fit_and_solve(head, x, y, xt, yt, method))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=audit)
    seen = set()
    checks = 0
    thread.start()
    while not done.is_set():
        seen.add(torch.zeros(1).dtype)
        checks += 1
        time.sleep(0.0005)
    thread.join()
    seen.add(torch.zeros(1).dtype)
    assert not errors, errors
    assert seen == {torch.float32} and checks > 1
    assert torch.get_default_dtype() == torch.float32
    assert all(np.array_equal(r[0], results[0][0]) for r in results)
