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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DTYPE = torch.float64
SOLVERS = ("exact", "ekfac")
# H has (C (d + 1))^2 entries: 6,000 parameters = 288 MB in float64, and its
# Cholesky factor takes seconds. Above that, CG with EK-FAC preconditioning.
FORM_HESSIAN_MAX_PARAMS = 6000
CG_RTOL = 1e-10
CG_MAXITER = 500
CHUNK = 16384  # rows per block of sample-wise work: bounds temporaries at large n


def _t(a, device):
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a, device=device)


def to_flat(v):
    """``(k, C, d + 1)`` -> pyDVL's ``(k, C * d + C)`` (weight rows, then bias)."""
    return torch.cat([v[:, :, :-1].reshape(v.shape[0], -1), v[:, :, -1]], dim=1)


def from_flat(flat, n_classes):
    """Inverse of :func:`to_flat`."""
    k = flat.shape[0]
    w = flat[:, : -n_classes].reshape(k, n_classes, -1)
    return torch.cat([w, flat[:, -n_classes:, None]], dim=2)


@dataclass
class _Ekfac:
    q_a: torch.Tensor  # (d+1, d+1) eigenvectors of E[x~ x~^T]
    q_g: torch.Tensor  # (C, C) eigenvectors of E[S_i]
    diag: torch.Tensor  # (C, d+1) Hessian diagonal in the Kronecker eigenbasis


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

    def __init__(self, weight, bias, l2, solver="exact", exact_self_influence=False, device=None):
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
        self._ekfac = None
        self._chol = None
        self.cg_iterations = []

    @classmethod
    def from_head(cls, head, l2, **kwargs):
        """From a ``noise_audit.head.LinearHead``."""
        return cls(head.fc.weight, head.fc.bias, l2, **kwargs)

    @property
    def n_parameters(self):
        return self.n_classes * (self.n_features + 1)

    # -- per-sample pieces -------------------------------------------------
    def _chunks(self, x, *arrays):
        for s in range(0, len(x), CHUNK):
            yield (_t(x[s : s + CHUNK], self.device).to(DTYPE),) + tuple(
                _t(a[s : s + CHUNK], self.device) for a in arrays
            )

    def probs(self, x):
        return torch.softmax(x @ self.w.T + self.b, dim=1)

    def residuals(self, x, y):
        """``r = softmax(W x + b) - onehot(y)``: the loss gradient w.r.t. the logits."""
        r = self.probs(x)
        r[torch.arange(len(y), device=r.device), y.long()] -= 1.0
        return r

    @staticmethod
    def _apply(x, v):
        """``[x, 1] @ v^T`` for ``v`` of shape ``(C, d + 1)`` -> ``(n, C)``."""
        return x @ v[:, :-1].T + v[:, -1]

    @staticmethod
    def _outer_sum(s, x):
        """``sum_i s_i [x_i, 1]^T`` -> ``(C, d + 1)``."""
        return torch.cat([s.T @ x, s.sum(0)[:, None]], dim=1)

    # -- fitting -------------------------------------------------------------
    def fit(self, x, y):
        """Computes the Hessian's pieces on the training data ``(x, y)``."""
        d1, c = self.n_features + 1, self.n_classes
        # kept for Hessian-vector products; no copy for a float64 array on the CPU
        self._x, self._n = _t(x, self.device).to(DTYPE), len(x)
        a = torch.zeros(d1, d1, dtype=DTYPE, device=self.device)
        g = torch.zeros(c, c, dtype=DTYPE, device=self.device)
        for (xb,) in self._chunks(x):
            p = self.probs(xb)
            a[:-1, :-1] += xb.T @ xb
            a[:-1, -1] += xb.sum(0)
            g += torch.diag(p.sum(0)) - p.T @ p
        a[-1, :-1] = a[:-1, -1]
        a[-1, -1] = self._n
        _, q_a = torch.linalg.eigh(a / self._n)
        _, q_g = torch.linalg.eigh(g / self._n)
        diag = torch.zeros(c, d1, dtype=DTYPE, device=self.device)
        for (xb,) in self._chunks(x):
            p = self.probs(xb)
            # q_k^T S_i q_k = sum_c p_ic q_kc^2 - (p_i . q_k)^2, exactly E_y[(q_k^T r_iy)^2]
            s_kfe = p @ q_g**2 - (p @ q_g) ** 2
            diag += s_kfe.T @ self._apply(xb, q_a.T) ** 2
        self._ekfac = _Ekfac(q_a, q_g, diag / self._n)
        if self.solver == "exact" and self.n_parameters <= FORM_HESSIAN_MAX_PARAMS:
            self._factor()
        return self

    def hessian(self):
        """The regularised Hessian, ``(p, p)`` in ``(C, d + 1)`` order (``c * (d + 1) + j``)."""
        d1, c = self.n_features + 1, self.n_classes
        h = torch.zeros(c, d1, c, d1, dtype=DTYPE, device=self.device)
        for (xb,) in self._chunks(self._x):
            p = self.probs(xb)
            xt = torch.cat([xb, torch.ones(len(xb), 1, dtype=DTYPE, device=self.device)], dim=1)
            for i in range(c):
                for j in range(i, c):
                    w = p[:, i] * (float(i == j) - p[:, j])
                    block = (xt * w[:, None]).T @ xt
                    h[i, :, j] += block
                    if i != j:
                        h[j, :, i] += block.T
        h = h.reshape(c * d1, c * d1) / self._n
        h.diagonal().add_(self.l2)
        return h

    def _factor(self):
        self._chol = torch.linalg.cholesky(self.hessian())

    # -- H v and H^{-1} v ----------------------------------------------------
    def hvp(self, v):
        """``H v`` for ``v`` of shape ``(k, C, d + 1)``."""
        out = torch.zeros_like(v)
        for (xb,) in self._chunks(self._x):
            p = self.probs(xb)
            for j in range(v.shape[0]):
                u = self._apply(xb, v[j])
                s = p * u - p * (p * u).sum(1, keepdim=True)
                out[j] += self._outer_sum(s, xb)
        return out / self._n + self.l2 * v

    def ekfac_solve(self, v):
        """EK-FAC's ``H^{-1} v``, closed form."""
        e = self._ekfac
        kfe = e.q_g.T @ v @ e.q_a
        return e.q_g @ (kfe / (e.diag + self.l2)) @ e.q_a.T

    def solve(self, v):
        """``H^{-1} v`` with this model's solver, ``v`` of shape ``(k, C, d + 1)``."""
        if self.solver == "ekfac":
            return self.ekfac_solve(v)
        if self._chol is not None:
            flat = v.reshape(v.shape[0], -1).T
            return torch.cholesky_solve(flat, self._chol).T.reshape(v.shape)
        return self._pcg(v)

    def _pcg(self, v):
        """Conjugate gradients, preconditioned by EK-FAC, one system per row."""
        out = torch.empty_like(v)
        for j in range(v.shape[0]):
            b = v[j : j + 1]
            x = self.ekfac_solve(b)
            r = b - self.hvp(x)
            z = self.ekfac_solve(r)
            p, rz = z.clone(), (r * z).sum()
            bnorm = b.norm()
            it = 0
            while r.norm() > CG_RTOL * bnorm and it < CG_MAXITER:
                hp = self.hvp(p)
                alpha = rz / (p * hp).sum()
                x += alpha * p
                r -= alpha * hp
                z = self.ekfac_solve(r)
                rz, rz_old = (r * z).sum(), rz
                p = z + (rz / rz_old) * p
                it += 1
            self.cg_iterations.append(it)
            out[j] = x[0]
        return out

    # -- influence -----------------------------------------------------------
    def mean_gradient(self, x, y):
        """Mean loss gradient over ``(x, y)``, shape ``(1, C, d + 1)``."""
        total = torch.zeros(self.n_classes, self.n_features + 1, dtype=DTYPE, device=self.device)
        for xb, yb in self._chunks(x, y):
            total += self._outer_sum(self.residuals(xb, yb), xb)
        return (total / len(x))[None]

    def influences_of(self, factors, x, y):
        """``<factor_t, g_i>`` for each factor row ``t`` and sample ``i``: ``(k, n)``."""
        out = []
        for xb, yb in self._chunks(x, y):
            r = self.residuals(xb, yb)
            out.append(torch.stack([(self._apply(xb, f) * r).sum(1) for f in factors]))
        return torch.cat(out, dim=1)

    def average_influence(self, x_test, y_test, x, y):
        """Mean influence of each ``(x, y)`` sample on ``(x_test, y_test)``: ``(n,)``.

        One solve on the mean test gradient (influence is linear in it); the
        sign is pyDVL's ``InfluenceMode.Up``: positive = the sample helps.
        """
        factor = self.solve(self.mean_gradient(x_test, y_test))
        return self.influences_of(factor, x, y)[0].cpu().numpy()

    def influences(self, x_test, y_test, x, y):
        """The full ``(m, n)`` influence matrix (explanations, references)."""
        grads = []
        for xb, yb in self._chunks(x_test, y_test):
            r = self.residuals(xb, yb)
            grads.append(r[:, :, None] * torch.cat([xb, torch.ones(len(xb), 1, dtype=DTYPE, device=self.device)], 1)[:, None, :])
        factors = self.solve(torch.cat(grads))
        return self.influences_of(factors, x, y).cpu().numpy()

    def self_influence(self, x, y):
        """``<H^{-1} g_i, g_i>`` for each sample: ``(n,)``."""
        if self.solver == "exact" and (self._chol is not None or self.exact_self_influence):
            return self._exact_self_influence(x, y)
        e = self._ekfac
        inv = 1.0 / (e.diag + self.l2)  # (C, d+1)
        out = []
        for xb, yb in self._chunks(x, y):
            r_kfe = (self.residuals(xb, yb) @ e.q_g) ** 2  # (n, C)
            x_kfe = self._apply(xb, e.q_a.T) ** 2  # (n, d+1)
            out.append((r_kfe * (x_kfe @ inv.T)).sum(1))
        return torch.cat(out).cpu().numpy()

    def _exact_self_influence(self, x, y):
        if self._chol is None:
            self._factor()
        c, d1 = self.n_classes, self.n_features + 1
        hinv = torch.cholesky_inverse(self._chol).reshape(c, d1, c, d1)
        out = []
        for xb, yb in self._chunks(x, y):
            r = self.residuals(xb, yb)
            xt = torch.cat([xb, torch.ones(len(xb), 1, dtype=DTYPE, device=self.device)], dim=1)
            s = torch.zeros(len(xb), dtype=DTYPE, device=self.device)
            for i in range(c):
                # q_ij = x~^T [H^-1]_ij x~ for all j at once
                q = ((xt @ hinv[i].reshape(d1, c * d1)).reshape(len(xb), c, d1) * xt[:, None, :]).sum(2)
                s += r[:, i] * (r * q).sum(1)
            out.append(s)
        return torch.cat(out).cpu().numpy()
