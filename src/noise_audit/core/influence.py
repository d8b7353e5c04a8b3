"""Stage 4, influence: pyDVL influence functions of the trained head.

The influence of a training sample ``z`` on a test sample ``z_t`` (pyDVL's
up-weighting influence) is

    I(z, z_t) = <H^{-1} grad l(z_t), grad l(z)>

with ``H`` the Hessian of the training objective. Positive means up-weighting
``z`` lowers the test loss: the sample helps (the seed notebook's sign).

**Average influence** is the mean of ``I(z, z_t)`` over the test set. Since
``I`` is linear in the test gradient, that mean equals

    <H^{-1} mean_t grad l(z_t), grad l(z)>

so we solve **one** inverse-Hessian system for the mean test gradient instead of
one per test sample and never form the test x train matrix.

**Self-influence** ``<H^{-1} grad l(z), grad l(z)>`` measures how much a sample
bends the model towards itself; divided by ``n`` it is the first-order
increase of the sample's own loss when it is left out.

Solvers (``method``):

- ``linear`` (what ``auto`` picks for the audit's linear head): the closed
  forms of :mod:`noise_audit.core.linear_influence`, exact average influence
  (Cholesky or EK-FAC-preconditioned CG) and exact self-influence up to
  :data:`~noise_audit.core.linear_influence.FORM_HESSIAN_MAX_PARAMS` parameters,
  EK-FAC self-influence above. Seconds where pyDVL takes minutes; tested
  against pyDVL's ``DirectInfluence`` in float64.
- pyDVL's own, the reference and the path for any other head
  (``train_last_block``): ``direct`` (exact Hessian, small heads), ``cg``,
  ``lissa``, ``arnoldi``, ``nystroem``, ``ekfac``; for a non-linear head
  ``auto`` picks ``direct`` up to :data:`DIRECT_MAX_PARAMS` parameters, else
  ``ekfac``.

Every function below takes either kind of fitted model.

Nothing here changes torch's process-wide state (the App's plugin runs audits
in a thread): tensors are created in float64 explicitly, and pyDVL's EK-FAC,
which would allocate its factors in torch's default dtype, is the float64
subclass of :mod:`noise_audit.core.pydvl_adapter`, the one module that uses
pyDVL internals (to solve ``H^{-1} v`` for a vector of our own).
"""

from __future__ import annotations

from typing import Union, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydvl.influence import InfluenceMode
from pydvl.influence.torch import (
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    LissaInfluence,
    NystroemSketchInfluence,
)
from pydvl.influence.torch.base import TorchComposableInfluence
from torch.utils.data import DataLoader, TensorDataset

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.core.head import DTYPE, LinearHead, as_tensor
from noise_audit.core.linear_influence import LinearHeadInfluence
from noise_audit.core.pydvl_adapter import Float64EkfacInfluence, solve_hvp

#: A fitted pyDVL influence model (any ``method`` but ``linear``).
PydvlModel = Union[TorchComposableInfluence, EkfacInfluence]
#: What :func:`fit_influence_model` returns.
InfluenceModel = Union[LinearHeadInfluence, PydvlModel]

DIRECT_MAX_PARAMS = 6000


def n_parameters(head: torch.nn.Module) -> int:
    return sum(p.numel() for p in head.parameters() if p.requires_grad)


def resolve_method(method: str, head: torch.nn.Module) -> str:
    """``auto`` -> ``linear`` for a :class:`LinearHead`; else ``direct`` for small heads, ``ekfac`` for large."""
    if method == "auto":
        if isinstance(head, LinearHead):
            return "linear"
        return "direct" if n_parameters(head) <= DIRECT_MAX_PARAMS else "ekfac"
    validation.influence_method(method)  # one of METHODS, or one clear error
    if method == "linear" and not isinstance(head, LinearHead):
        raise NoiseAuditError("method 'linear' needs the linear head (not train_last_block)")
    return method


def _loader(x, y, batch_size: int = 1024) -> DataLoader:
    return DataLoader(TensorDataset(as_tensor(x), torch.as_tensor(np.asarray(y), dtype=torch.long)), batch_size=batch_size)


def fit_influence_model(
    head: torch.nn.Module,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    l2: float,
    method: str = "direct",
    rank: int | None = None,
    progress: bool = False,
) -> InfluenceModel:
    """A fitted pyDVL influence model of ``head`` on training data ``(x, y)``.

    ``l2`` is the head's training regularisation, passed as pyDVL's Hessian
    regularisation so the Hessian is that of the regularised objective.
    """
    method = resolve_method(method, head)
    if method == "linear":
        linear = LinearHeadInfluence.from_head(cast(LinearHead, head), l2).fit(np.asarray(x, dtype=np.float64), np.asarray(y))
        linear.method_name = method
        return linear
    head.cpu()  # pyDVL's solvers run here on the CPU, with the data loaders' tensors
    loss = F.cross_entropy
    p = n_parameters(head)
    rank = rank or min(p - 1, 100)
    model: PydvlModel
    if method == "direct":
        model = DirectInfluence(head, loss, regularization=l2)
    elif method == "cg":
        # Block CG solves a whole batch of right-hand sides at once (matrix
        # products instead of one CG run per sample), which keeps
        # self-influence affordable.
        model = CgInfluence(
            head, loss, regularization=l2, rtol=1e-8, atol=1e-10, maxiter=1000,
            solve_simultaneously=True, warn_on_max_iteration=False,
        )
    elif method == "lissa":
        model = LissaInfluence(head, loss, regularization=l2, maxiter=2000, scale=10.0, rtol=1e-6, warn_on_max_iteration=False)
    elif method == "arnoldi":
        model = ArnoldiInfluence(head, loss, regularization=l2, rank=rank, use_woodbury=True)
    elif method == "nystroem":
        model = NystroemSketchInfluence(head, loss, regularization=l2, rank=rank)
    else:
        # pyDVL's own EK-FAC would accumulate its factors in torch's default
        # dtype (float32); this one uses the head's (float64).
        model = Float64EkfacInfluence(head, update_diagonal=True, hessian_regularization=l2, progress=progress)
    model.method_name = method  # type: ignore[union-attr]  # our tag on pyDVL's object
    return model.fit(_loader(x, y))


def mean_gradient(head: torch.nn.Module, x: npt.ArrayLike, y: npt.ArrayLike, batch_size: int = 1024) -> torch.Tensor:
    """Mean over samples of the loss gradient, flattened in parameter order."""
    y = np.asarray(y)
    params = [p for p in head.parameters() if p.requires_grad]
    total: torch.Tensor | None = None
    for xb, yb in _loader(x, y, batch_size):
        loss = F.cross_entropy(head(xb), yb, reduction="sum")
        grads = torch.autograd.grad(loss, params)
        flat = torch.cat([g.flatten() for g in grads])
        total = flat if total is None else total + flat
    if total is None:
        raise NoiseAuditError("no samples to average the gradient over")
    return (total / len(y)).detach()


def solve(model: PydvlModel, rhs: torch.Tensor) -> torch.Tensor:
    """``H^{-1} rhs`` for rows of ``rhs`` with a pyDVL model's solver.

    See :func:`noise_audit.core.pydvl_adapter.solve_hvp`.
    """
    return solve_hvp(model, rhs)


def average_influence(
    model: InfluenceModel,
    head: torch.nn.Module,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    batch_size: int = 1024,
) -> np.ndarray:
    """Mean influence of each ``(x, y)`` sample on the test set, one solve.

    Returns an array of shape ``(n,)``; equals
    ``influences(x_test, y_test, x, y).mean(0)`` up to solver accuracy.
    """
    if isinstance(model, LinearHeadInfluence):
        return model.average_influence(np.asarray(x_test), np.asarray(y_test), x, np.asarray(y))
    factors = solve(model, mean_gradient(head, x_test, y_test)[None, :].to(DTYPE))
    out = []
    for xb, yb in _loader(x, y, batch_size):
        out.append(model.influences_from_factors(factors, xb, yb, mode=InfluenceMode.Up)[0])
    return torch.cat(out).detach().numpy()


def self_influence(model: InfluenceModel, x: npt.ArrayLike, y: npt.ArrayLike, batch_size: int | None = None) -> np.ndarray:
    """``<H^{-1} g_i, g_i>`` for each sample, shape ``(n,)``."""
    if isinstance(model, LinearHeadInfluence):
        return model.self_influence(x, np.asarray(y))
    # A batch holds (batch x parameters) gradients and solutions: keep each
    # such matrix near 100M numbers whatever the model size.
    batch_size = batch_size or int(max(16, min(1024, 1e8 // n_parameters(model.model))))
    out = []
    for xb, yb in _loader(x, y, batch_size):
        factors = model.influence_factors(xb, yb)
        out.append(torch.diagonal(model.influences_from_factors(factors, xb, yb, mode=InfluenceMode.Up)))
    return torch.cat(out).detach().numpy()


def influences_on(
    model: InfluenceModel,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    batch_size: int = 1024,
) -> np.ndarray:
    """Influence of each training sample on each test sample, ``(m, n)``.

    The seed notebook's full matrix; used for single-image explanations (m=1)
    and as the reference the one-solve average is checked against.
    """
    if isinstance(model, LinearHeadInfluence):
        return model.influences(x_test, np.asarray(y_test), x, np.asarray(y))
    factors = model.influence_factors(as_tensor(x_test), torch.as_tensor(np.asarray(y_test), dtype=torch.long))
    out = []
    for xb, yb in _loader(x, y, batch_size):
        out.append(model.influences_from_factors(factors, xb, yb, mode=InfluenceMode.Up))
    return torch.cat(out, dim=1).detach().numpy()
