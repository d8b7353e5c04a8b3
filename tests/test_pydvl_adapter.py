"""The pyDVL internals noise-audit relies on, pinned to pyDVL 0.10, in float64.

If a pyDVL release renames, re-signs or changes the result of any private
name :mod:`noise_audit.core.pydvl_adapter` uses, these tests fail: the
signatures are checked, and the results are compared with pyDVL's public
``influence_factors`` and with an independent EK-FAC computation.
"""

import inspect
import warnings

import numpy as np
import pydvl
import pytest
import torch
from pydvl.influence.torch import (
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    LissaInfluence,
    NystroemSketchInfluence,
)
from pydvl.influence.torch.base import TorchComposableInfluence
from pydvl.influence.types import BlockMapper, Operator, OperatorGradientComposition
from torch.utils.data import DataLoader, TensorDataset

from noise_audit.core import head as heads
from noise_audit.core import pydvl_adapter as adapter
from noise_audit.errors import NoiseAuditError

L2 = 0.1
F64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.7 * rng.normal(size=90) > 0).astype(int) + (x[:, 2] > 0.8)
    head, hist = heads.fit_head(x, y, 3, L2)
    assert hist["grad_norm"] < 1e-7
    return x, y, head


def _flat_hessian(model, x, y):
    """The Hessian of the mean cross-entropy in the model's flat parameter order (pyDVL's), by autograd."""
    named = [(k, p.detach()) for k, p in model.named_parameters()]
    xs, ys = heads.as_tensor(x), torch.as_tensor(y, dtype=torch.long)

    def loss(theta):
        params, at = {}, 0
        for k, p in named:
            params[k] = theta[at : at + p.numel()].reshape(p.shape)
            at += p.numel()
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, (xs,)), ys)

    return torch.autograd.functional.hessian(loss, torch.cat([p.flatten() for _, p in named]))


@pytest.fixture(scope="module")
def block_head(problem):
    """A two-layer head (EK-FAC's layers, pyDVL's flat order over several parameters), trained to a
    minimum of its L2-regularised loss like every head the audit hands to pyDVL.

    At a minimum, the Hessian plus ``L2`` (what the solvers invert) is positive definite, so CG
    is well posed. The untrained head's was not (smallest eigenvalue -0.06): CG cannot converge
    on an indefinite system, and stopped at maxiter with residuals that differed from one
    right-hand side to another."""
    x, y, _ = problem

    def make(n_classes):
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, n_classes)).to(F64)

    head, hist = heads.fit_head(x, y, 3, L2, make_head=make)
    assert hist["grad_norm"] < 1e-7
    eigenvalues = torch.linalg.eigvalsh(_flat_hessian(head, x, y)) + L2
    assert eigenvalues.min() > 1e-3 and eigenvalues.max() / eigenvalues.min() < 1e3  # well posed for CG
    return head


def _loader(x, y):
    return DataLoader(TensorDataset(heads.as_tensor(x), torch.as_tensor(y, dtype=torch.long)), batch_size=32)


def _per_sample_grads(model, x, y):
    """Loss gradients one sample at a time with plain autograd, flattened in parameter order."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi, yi in zip(heads.as_tensor(x), torch.as_tensor(y, dtype=torch.long)):
        loss = torch.nn.functional.cross_entropy(model(xi[None]), yi[None])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def test_pinned_pydvl_and_private_signatures():
    assert pydvl.__version__.startswith("0.10."), pydvl.__version__
    sig = inspect.signature
    assert list(sig(EkfacInfluence._solve_hvp).parameters) == ["self", "rhs"]
    for name in ("_init_layer_kfac_blocks", "_init_layer_diag"):
        assert isinstance(inspect.getattr_static(EkfacInfluence, name), staticmethod), name
        assert list(sig(getattr(EkfacInfluence, name)).parameters) == ["module"], name
    assert list(sig(BlockMapper.__init__).parameters) == ["self", "composable_block_dict"]
    assert list(sig(OperatorGradientComposition.__init__).parameters)[:2] == ["self", "op"]
    assert list(sig(Operator.apply).parameters) == ["self", "tensor"]
    assert inspect.isfunction(TorchComposableInfluence._create_block_mapper)
    for cls in (DirectInfluence, CgInfluence, LissaInfluence, ArnoldiInfluence, NystroemSketchInfluence):
        assert issubclass(cls, TorchComposableInfluence), cls


def _models(head):
    loss = torch.nn.functional.cross_entropy
    return {
        "direct": DirectInfluence(head, loss, regularization=L2),
        "cg": CgInfluence(head, loss, regularization=L2, rtol=1e-12, atol=1e-14, maxiter=500, solve_simultaneously=True),
        "lissa": LissaInfluence(head, loss, regularization=L2, maxiter=30, scale=10.0, rtol=0.0, warn_on_max_iteration=False),
        "arnoldi": ArnoldiInfluence(head, loss, regularization=L2, rank=10, use_woodbury=True),
        "nystroem": NystroemSketchInfluence(head, loss, regularization=L2, rank=10),
        "ekfac": adapter.Float64EkfacInfluence(head, update_diagonal=True, hessian_regularization=L2),
    }


@pytest.mark.parametrize("which", ["linear", "block"])
@pytest.mark.parametrize("method", ["direct", "cg", "lissa", "arnoldi", "nystroem", "ekfac"])
def test_solve_hvp_is_what_public_influence_factors_applies(problem, block_head, which, method):
    """``solve_hvp`` of independently computed gradients == pyDVL's public ``influence_factors``."""
    x, y, linear = problem
    head = linear if which == "linear" else block_head
    torch.manual_seed(0)
    model = _models(head)[method].fit(_loader(x, y))
    xs, ys = x[:7], y[:7]
    grads = _per_sample_grads(head, xs, ys)
    with warnings.catch_warnings():  # CG must reach its tolerance: the comparison below assumes it
        warnings.filterwarnings("error", message="Reached max number of iterations")
        torch.manual_seed(1)  # LiSSA draws its batches from torch's RNG: the same draws for each
        ours = adapter.solve_hvp(model, grads)
        torch.manual_seed(1)
        public = model.influence_factors(heads.as_tensor(xs), torch.as_tensor(ys, dtype=torch.long))
    assert ours.dtype == public.dtype == F64 and ours.shape == public.shape == grads.shape
    # the same operator on gradients equal to round-off; CG stops on a residual, so round-off in its
    # right-hand side shows at its tolerance
    tol = 1e-8 if method == "cg" else 1e-11
    np.testing.assert_allclose(ours.numpy(), public.numpy(), rtol=0, atol=tol * public.abs().max().item())
    # and it is linear: one solve of the mean gradient is the mean of the per-sample solves
    torch.manual_seed(1)
    mean = adapter.solve_hvp(model, grads.mean(0, keepdim=True))
    np.testing.assert_allclose(mean[0].numpy(), public.mean(0).numpy(), rtol=0, atol=tol * public.abs().max().item())


def test_solve_hvp_rejects_bad_input(problem):
    x, y, head = problem
    model = DirectInfluence(head, torch.nn.functional.cross_entropy, regularization=L2)
    with pytest.raises(NoiseAuditError, match="fitted"):
        adapter.solve_hvp(model, torch.zeros(1, 18, dtype=F64))
    model.fit(_loader(x, y))
    with pytest.raises(NoiseAuditError, match="shape"):
        adapter.solve_hvp(model, torch.zeros(18, dtype=F64))


def _ekfac_reference(x, head, rhs):
    """pyDVL's EK-FAC (update_diagonal=True) of one linear layer, from its definition, in numpy float64.

    pyDVL's K-FAC uses the loss ``sum_k sqrt(p_k) log p_k`` (sqrt(p) held
    constant), whose gradient in the logits is ``g = s - p sum(s)``, ``s = sqrt(p)``.
    """
    w = head.fc.weight.detach().numpy()
    b = head.fc.bias.detach().numpy()
    a = np.hstack([x, np.ones((len(x), 1))])  # layer input with the bias column
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    s = np.sqrt(p)
    g = s - p * s.sum(1, keepdims=True)
    n = len(x)
    _, ua = np.linalg.eigh(a.T @ a / n)
    _, ug = np.linalg.eigh(g.T @ g / n)
    diag = ((g @ ug) ** 2).T @ ((a @ ua) ** 2) / n  # (C, d + 1)
    c, d = w.shape
    out = []
    for v in rhs:
        r = np.hstack([v[: c * d].reshape(c, d), v[c * d :, None]])  # pyDVL's order: weight rows, then bias
        inv = ug @ ((ug.T @ r @ ua) / (diag + L2)) @ ua.T
        out.append(np.concatenate([inv[:, :-1].ravel(), inv[:, -1]]))
    return np.array(out)


def test_float64_ekfac_equals_ekfac_computed_in_float64(problem):
    x, y, head = problem
    assert torch.get_default_dtype() == torch.float32
    model = adapter.Float64EkfacInfluence(head, update_diagonal=True, hessian_regularization=L2).fit(_loader(x, y))
    assert torch.get_default_dtype() == torch.float32
    assert adapter.fitted_dtypes(model) == {F64}
    rhs = torch.randn(4, 18, dtype=F64, generator=torch.Generator().manual_seed(2))
    ref = _ekfac_reference(x, head, rhs.numpy())
    np.testing.assert_allclose(adapter.solve_hvp(model, rhs).numpy(), ref, rtol=0, atol=1e-11 * np.abs(ref).max())


def test_plain_pydvl_ekfac_still_needs_the_float64_allocators(problem):
    """Why the subclass exists: under the float32 default, pyDVL 0.10's EK-FAC of a float64 model
    fits float32 factors, and with ``update_diagonal`` fails outright."""
    x, y, head = problem
    plain = EkfacInfluence(head, update_diagonal=False, hessian_regularization=L2).fit(_loader(x, y))
    assert adapter.fitted_dtypes(plain) == {torch.float32}
    with pytest.raises(RuntimeError, match="dtype"):
        EkfacInfluence(head, update_diagonal=True, hessian_regularization=L2).fit(_loader(x, y))
