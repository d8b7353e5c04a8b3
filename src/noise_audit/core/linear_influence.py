"""Stage 4, influence (fast path): closed-form influence for a linear softmax head.

The audit's head is ``logits = W x + b`` trained on mean cross-entropy plus
``(l2 / 2) ||theta||^2``. For such a head every quantity pyDVL computes
generically has a closed form, and using it turns hours into seconds:

- the gradient of sample ``i`` is an outer product,
  ``g_i = r_i x~_i^T`` with ``r_i = softmax(z_i) - onehot(y_i)`` (``C``) and
  ``x~_i = [x_i, 1]`` (``d + 1``), so it never needs to be materialised;
- the Hessian is ``H = (1/n) sum_i S_i (x) x~_i x~_i^T + l2 I`` with
  ``S_i = diag(p_i) - p_i p_i^T``, and ``H V`` for a ``C x (d + 1)``
  matrix ``V`` is two ``n x d`` by ``d x C`` products;
- EK-FAC (George et al. 2018) needs the eigenbases of
  ``A = E[x~ x~^T]`` and ``G = E[S_i]`` and the Hessian's exact diagonal in
  that basis, ``L_kl = E[(q_k^T S_i q_k) (u_l^T x~_i)^2]``; the expectation
  over the model's labels is taken exactly, without sampling;
- self-influence in the EK-FAC basis is
  ``sum_kl (q_k^T r_i)^2 (u_l^T x~_i)^2 / (L_kl + l2)``, one ``n x (d + 1)``
  by ``(d + 1) x C`` product, never an ``n x C x d`` tensor.

Solvers (``solver``):

- ``"exact"``: ``H^{-1} v`` by conjugate gradients with exact Hessian-vector
  products, preconditioned by EK-FAC (a handful of iterations), or by a
  Cholesky factor of ``H`` where ``H`` is small enough to form
  (:data:`FORM_HESSIAN_MAX_PARAMS`). Self-influence needs every ``H^{-1} g_i``
  and therefore the factor; above that size it falls back to EK-FAC unless
  ``exact_self_influence=True``.
- ``"ekfac"``: everything through EK-FAC.

Vectors in parameter space are ``(k, C, d + 1)`` tensors here (bias last);
:func:`to_flat` gives pyDVL's flattening (``weight.flatten()`` then ``bias``).
pyDVL's ``DirectInfluence`` is the reference this module is tested against
(``tests/test_linear_influence.py``, float64).

Every pass over the samples is a block function (below the class) run through
:class:`~noise_audit.core.blocks.Blocks`: a loop here, or tasks on Dask workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from noise_audit.core.blocks import Block, Blocks, Rows, as_tensor, kept, rows_of, weighted
from noise_audit.core.head import LinearHead, loss_and_gradient, outer_sum

DTYPE = torch.float64
SOLVERS = ("exact", "ekfac")
# H has (C (d + 1))^2 entries: 6,000 parameters = 288 MB in float64, and its
# Cholesky factor takes seconds. Above that, CG with EK-FAC preconditioning.
FORM_HESSIAN_MAX_PARAMS = 6000
CG_RTOL = 1e-10
CG_MAXITER = 500


def to_flat(v: torch.Tensor) -> torch.Tensor:
    """``(k, C, d + 1)`` -> pyDVL's ``(k, C * d + C)`` (weight rows, then bias)."""
    return torch.cat([v[:, :, :-1].reshape(v.shape[0], -1), v[:, :, -1]], dim=1)


@dataclass
class _Ekfac:
    q_a: torch.Tensor  # (d+1, d+1) eigenvectors of E[x~ x~^T]
    q_g: torch.Tensor  # (C, C) eigenvectors of E[S_i]
    diag: torch.Tensor  # (C, d+1) Hessian diagonal in the Kronecker eigenbasis


def local_blocks(x: npt.ArrayLike | torch.Tensor, y: np.ndarray | torch.Tensor,
                 device: torch.device | str | None = None, train: npt.ArrayLike | None = None) -> Blocks:
    """Arrays as in-process :class:`Blocks` (all rows training rows unless ``train`` says)."""
    n = len(y)
    train = np.ones(n, dtype=bool) if train is None else np.asarray(train, dtype=bool)
    return Blocks.from_arrays({"x": np.asarray(x, dtype=np.float64) if not torch.is_tensor(x) else x,
                               "y": np.asarray(y), "train": train}, device=device)


class LinearHeadInfluence:
    """Influence functions of a linear softmax head, in closed form.

    Args:
        weight: ``(C, d)`` head weights.
        bias: ``(C,)`` head bias.
        l2: the head's L2 strength; the Hessian is that of the regularised
            objective, as in pyDVL's ``regularization``.
        solver: ``"exact"`` or ``"ekfac"`` (see module doc).
        exact_self_influence: with ``"exact"``, form the Hessian for
            self-influence even above :data:`FORM_HESSIAN_MAX_PARAMS`.
        device: torch device of the computation (``None``: the weights').
    """

    device: torch.device
    w: torch.Tensor
    b: torch.Tensor
    l2: float
    solver: str
    exact_self_influence: bool
    n_classes: int
    n_features: int
    cg_iterations: list[int]  # conjugate-gradient iterations of each solve
    blocks: Blocks  # the training rows, once fitted
    method_name: str  # set by noise_audit.core.influence.fit_influence_model

    def __init__(self, weight: npt.ArrayLike | torch.Tensor, bias: npt.ArrayLike | torch.Tensor, l2: float,
                 solver: str = "exact", exact_self_influence: bool = False,
                 device: torch.device | str | None = None) -> None:
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, not {solver!r}")
        weight = torch.as_tensor(weight).detach()
        self.device = torch.device(device) if device is not None else weight.device
        self.w = weight.to(self.device, DTYPE)
        self.b = torch.as_tensor(bias).detach().to(self.device, DTYPE)
        self.l2 = float(l2)
        self.solver = solver
        self.exact_self_influence = exact_self_influence
        self.n_classes, self.n_features = self.w.shape
        self._ekfac: _Ekfac | None = None
        self._chol: torch.Tensor | None = None
        self.cg_iterations = []

    @classmethod
    def from_head(cls, head: LinearHead, l2: float, **kwargs: Any) -> LinearHeadInfluence:
        """From a ``noise_audit.core.head.LinearHead``."""
        return cls(head.fc.weight, head.fc.bias, l2, **kwargs)

    @property
    def n_parameters(self) -> int:
        return self.n_classes * (self.n_features + 1)

    def _params(self, blocks: Blocks) -> tuple[Any, Any]:
        """The weights as block-function arguments."""
        return blocks.arg(self.w), blocks.arg(self.b)

    def _here(self, t: Any) -> torch.Tensor:
        return as_tensor(t).to(self.device)

    # -- fitting -------------------------------------------------------------
    def fit(self, x: npt.ArrayLike | torch.Tensor, y: np.ndarray | torch.Tensor) -> LinearHeadInfluence:
        """Computes the Hessian's pieces on the training data ``(x, y)``."""
        return self.fit_blocks(local_blocks(x, y, self.device))

    def fit_blocks(self, blocks: Blocks) -> LinearHeadInfluence:
        """:meth:`fit` on the training rows of :class:`Blocks`."""
        self.blocks = blocks
        w, b = self._params(blocks)
        a, g, n = blocks.map_sum(kfac_factors, w, b)
        self._n = int(n)
        _, q_a = torch.linalg.eigh(self._here(a) / self._n)
        _, q_g = torch.linalg.eigh(self._here(g) / self._n)
        diag = blocks.map_sum(kfe_diagonal, w, b, blocks.arg(q_a), blocks.arg(q_g))
        self._ekfac = _Ekfac(q_a, q_g, self._here(diag) / self._n)
        if self.solver == "exact" and self.n_parameters <= FORM_HESSIAN_MAX_PARAMS:
            self._factor()
        return self

    def hessian(self) -> torch.Tensor:
        """The regularised Hessian, ``(p, p)`` in ``(C, d + 1)`` order (``c * (d + 1) + j``)."""
        h = self._here(self.blocks.map_sum(hessian_sum, *self._params(self.blocks)))
        h = h.reshape(self.n_parameters, self.n_parameters) / self._n
        h.diagonal().add_(self.l2)
        return h

    def _factor(self) -> None:
        self._chol = torch.linalg.cholesky(self.hessian())

    # -- H v and H^{-1} v ----------------------------------------------------
    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for ``v`` of shape ``(k, C, d + 1)``."""
        hv = self.blocks.map_sum(hvp_sum, *self._params(self.blocks), self.blocks.arg(v))
        return self._here(hv) / self._n + self.l2 * v

    def ekfac_solve(self, v: torch.Tensor) -> torch.Tensor:
        """EK-FAC's ``H^{-1} v``, closed form."""
        e = cast(_Ekfac, self._ekfac)  # set by fit
        kfe = e.q_g.T @ v @ e.q_a
        return e.q_g @ (kfe / (e.diag + self.l2)) @ e.q_a.T

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``H^{-1} v`` with this model's solver, ``v`` of shape ``(k, C, d + 1)``."""
        if self.solver == "ekfac":
            return self.ekfac_solve(v)
        if self._chol is not None:
            flat = v.reshape(v.shape[0], -1).T
            return torch.cholesky_solve(flat, self._chol).T.reshape(v.shape)
        return self._pcg(v)

    def _pcg(self, v: torch.Tensor) -> torch.Tensor:
        """Conjugate gradients, preconditioned by EK-FAC, all rows of ``v`` at once
        (block-diagonal: each row is its own system, with its own step sizes)."""
        def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a * b).sum((1, 2), keepdim=True)

        x = self.ekfac_solve(v)
        r = v - self.hvp(x)
        z = self.ekfac_solve(r)
        p, rz = z.clone(), dot(r, z)
        bnorm = v.flatten(1).norm(dim=1)
        it = 0
        while (r.flatten(1).norm(dim=1) > CG_RTOL * bnorm).any() and it < CG_MAXITER:
            hp = self.hvp(p)
            alpha = rz / dot(p, hp)
            x = x + alpha * p
            r = r - alpha * hp
            z = self.ekfac_solve(r)
            rz, rz_old = dot(r, z), rz
            p = z + (rz / rz_old) * p
            it += 1
        self.cg_iterations.append(it)
        return x

    # -- influence -----------------------------------------------------------
    def mean_gradient_blocks(self, blocks: Blocks, rows: Rows) -> torch.Tensor:
        """Mean loss gradient over ``rows`` of ``blocks``, shape ``(1, C, d + 1)``."""
        _, grad, n = blocks.map_sum(loss_and_gradient, *self._params(blocks), rows)
        return (self._here(grad) / max(int(n), 1))[None]

    def train_and_test_influence(self, blocks: Blocks | None = None) -> np.ndarray:
        """Average influence of every row, in block order: of training rows on the
        held-out ones, and (roles swapped) of held-out rows on the training ones.

        One solve per mean gradient (influence is linear in it), both systems
        solved together, and one pass for the dot products; the sign is
        pyDVL's ``InfluenceMode.Up``: positive = the sample helps.
        """
        blocks = blocks or self.blocks
        targets = torch.cat([self.mean_gradient_blocks(blocks, "test"), self.mean_gradient_blocks(blocks, "train")])
        factors = self.solve(targets)
        dots = blocks.map_concat(gradient_dots, *self._params(blocks), blocks.arg(factors), "all")
        train = blocks.map_concat(_train_column).astype(bool)
        return np.where(train, dots[:, 0], dots[:, 1])

    def average_influence(self, x_test: npt.ArrayLike | torch.Tensor, y_test: np.ndarray | torch.Tensor,
                          x: npt.ArrayLike | torch.Tensor, y: np.ndarray | torch.Tensor) -> np.ndarray:
        """Mean influence of each ``(x, y)`` sample on ``(x_test, y_test)``: ``(n,)``."""
        factor = self.solve(self.mean_gradient_blocks(local_blocks(x_test, y_test, self.device), "all"))
        blocks = local_blocks(x, y, self.device)
        return blocks.map_concat(gradient_dots, self.w, self.b, factor, "all")[:, 0]

    def influences(self, x_test: npt.ArrayLike | torch.Tensor, y_test: np.ndarray | torch.Tensor,
                   x: npt.ArrayLike | torch.Tensor, y: np.ndarray | torch.Tensor) -> np.ndarray:
        """The full ``(m, n)`` influence matrix (explanations, references)."""
        test = local_blocks(x_test, y_test, self.device)
        grads = torch.cat([as_tensor(g).to(self.device) for g in test.map(sample_gradients, self.w, self.b)])
        factors = self.solve(grads)
        return local_blocks(x, y, self.device).map_concat(gradient_dots, self.w, self.b, factors, "all").T

    def self_influence_blocks(self, rows: Rows = "all", blocks: Blocks | None = None) -> np.ndarray:
        """``<H^{-1} g_i, g_i>`` for each sample in ``rows``, in block order."""
        blocks = blocks or self.blocks
        w, b = self._params(blocks)
        if self.solver == "exact" and (self._chol is not None or self.exact_self_influence):
            if self._chol is None:
                self._factor()
            c, d1 = self.n_classes, self.n_features + 1
            hinv = torch.cholesky_inverse(cast(torch.Tensor, self._chol)).reshape(c, d1, c, d1)
            return blocks.map_concat(exact_self_influence, w, b, blocks.arg(hinv), rows)
        e = cast(_Ekfac, self._ekfac)  # set by fit
        inv = 1.0 / (e.diag + self.l2)
        args = [blocks.arg(t) for t in (e.q_a, e.q_g, inv)]
        return blocks.map_concat(ekfac_self_influence, w, b, *args, rows)

    def self_influence(self, x: npt.ArrayLike | torch.Tensor, y: np.ndarray | torch.Tensor) -> np.ndarray:
        """``<H^{-1} g_i, g_i>`` for each sample: ``(n,)``."""
        return self.self_influence_blocks("all", local_blocks(x, y, self.device))


# -- block functions: one pass over a block's rows each (see core/blocks.py) ---------

def _train_column(block: Block) -> torch.Tensor:
    return as_tensor(block["train"])


def _apply(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[x, 1] @ v^T`` for ``v`` of shape ``(C, d + 1)`` -> ``(n, C)``."""
    return x @ v[:, :-1].T + v[:, -1]


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)


def _probs(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x @ w.T + b, dim=1)


def _residuals(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``r = softmax(W x + b) - onehot(y)``: the loss gradient w.r.t. the logits."""
    r = _probs(x, w, b)
    r[torch.arange(len(y), device=r.device), y.long()] -= 1.0
    return r


def kfac_factors(block: Block, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sum x~ x~^T, sum S_i, rows)`` over the training rows."""
    x, keep = rows_of(block, "train", "x")
    p = _probs(x, w, b)
    xt = _with_ones(x)
    pk = weighted(p, keep)
    count = float(len(x)) if keep is None else keep.sum().item()
    return xt.T @ weighted(xt, keep), torch.diag(pk.sum(0)) - pk.T @ p, torch.tensor(count, dtype=DTYPE)


def kfe_diagonal(block: Block, w: torch.Tensor, b: torch.Tensor, q_a: torch.Tensor, q_g: torch.Tensor) -> torch.Tensor:
    """Summed Hessian diagonal in the Kronecker eigenbasis, over the training rows."""
    x, keep = rows_of(block, "train", "x")
    p = _probs(x, w, b)
    # q_k^T S_i q_k = sum_c p_ic q_kc^2 - (p_i . q_k)^2, exactly E_y[(q_k^T r_iy)^2]
    s_kfe = weighted(p @ q_g**2 - (p @ q_g) ** 2, keep)
    return s_kfe.T @ _apply(x, q_a.T) ** 2


def hessian_sum(block: Block, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Summed ``S_i (x) x~_i x~_i^T`` over the training rows, ``(C, d + 1, C, d + 1)``."""
    x, keep = rows_of(block, "train", "x")
    p = _probs(x, w, b)
    xt = _with_ones(x)
    c, d1 = p.shape[1], xt.shape[1]
    h = torch.zeros(c, d1, c, d1, dtype=x.dtype, device=x.device)
    for i in range(c):
        for j in range(i, c):
            block_ij = (xt * weighted(p[:, i] * (float(i == j) - p[:, j]), keep)[:, None]).T @ xt
            h[i, :, j] += block_ij
            if i != j:
                h[j, :, i] += block_ij.T
    return h


def hvp_sum(block: Block, w: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Summed ``S_i (x) x~_i x~_i^T v`` over the training rows, for each of ``v``'s ``k`` rows.

    All ``k`` at once: one ``n x d`` by ``d x kC`` product each way.
    """
    x, keep = rows_of(block, "train", "x")
    p = _probs(x, w, b)[:, None, :]  # (n, 1, C)
    k, c, d1 = v.shape
    u = _apply(x, v.reshape(k * c, d1)).reshape(-1, k, c)  # (n, k, C)
    s = weighted(p * u - p * (p * u).sum(2, keepdim=True), keep).reshape(-1, k * c)
    return outer_sum(s, x).reshape(k, c, d1)


def sample_gradients(block: Block, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each row's loss gradient, ``(n, C, d + 1)`` (small blocks only: explanations)."""
    x, y, _ = rows_of(block, "all", "x", "y")
    return _residuals(x, y, w, b)[:, :, None] * _with_ones(x)[:, None, :]


def gradient_dots(block: Block, w: torch.Tensor, b: torch.Tensor, factors: torch.Tensor, rows: Rows) -> torch.Tensor:
    """``<factor_t, g_i>`` for each row ``i`` in ``rows`` and factor ``t``: ``(n, k)``."""
    x, y, keep = rows_of(block, rows, "x", "y")
    r = _residuals(x, y, w, b)
    return kept(torch.stack([(_apply(x, f) * r).sum(1) for f in factors], dim=1), keep)


def ekfac_self_influence(block: Block, w: torch.Tensor, b: torch.Tensor, q_a: torch.Tensor, q_g: torch.Tensor,
                         inv: torch.Tensor, rows: Rows) -> torch.Tensor:
    """``sum_kl (q_k^T r_i)^2 (u_l^T x~_i)^2 / (L_kl + l2)`` for each row."""
    x, y, keep = rows_of(block, rows, "x", "y")
    r_kfe = (_residuals(x, y, w, b) @ q_g) ** 2
    return kept((r_kfe * ((_apply(x, q_a.T) ** 2) @ inv.T)).sum(1), keep)


def exact_self_influence(block: Block, w: torch.Tensor, b: torch.Tensor, hinv: torch.Tensor,
                         rows: Rows) -> torch.Tensor:
    """``g_i^T H^{-1} g_i`` for each row, from the inverse Hessian's blocks."""
    x, y, keep = rows_of(block, rows, "x", "y")
    r = _residuals(x, y, w, b)
    xt = _with_ones(x)
    c, d1 = hinv.shape[0], hinv.shape[1]
    s = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for i in range(c):
        # q_ij = x~^T [H^-1]_ij x~ for all j at once
        q = ((xt @ hinv[i].reshape(d1, c * d1)).reshape(len(x), c, d1) * xt[:, None, :]).sum(2)
        s += r[:, i] * (r * q).sum(1)
    return kept(s, keep)
