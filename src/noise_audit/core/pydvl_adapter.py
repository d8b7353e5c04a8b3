"""The only place noise-audit reaches into pyDVL's internals (pyDVL 0.10).

pyDVL's public influence API computes ``H^{-1}`` times the *per-sample* loss
gradients of a batch (``influence_factors(x, y)``); the audit needs
``H^{-1} v`` for one vector it computes itself (the mean test gradient), so
that it solves one system instead of one per test sample. pyDVL 0.10 has no
public method for that, so :func:`solve_hvp` uses:

- ``EkfacInfluence._solve_hvp(rhs)`` for EK-FAC;
- ``model.block_mapper.composable_block_dict[<block>].op.apply(rhs)`` for
  the composable models (direct, CG, LiSSA, Arnoldi, Nystroem), the very
  operator that ``influence_factors`` applies to the gradients.

pyDVL 0.10's EK-FAC also allocates its Kronecker factors with ``torch.zeros``
in torch's *default* dtype (float32) whatever the model's dtype, which loses
the float64 precision of the audit's head. Switching the process-wide default
(``torch.set_default_dtype``) is not an option: audits run in a thread of the
App's plugin, and every other thread would see the switch.
:class:`Float64EkfacInfluence` overrides the two private allocators to use the
layer's own dtype (and device) instead.

``tests/test_pydvl_adapter.py`` pins all of this: the private names and
signatures, and the results, compared in float64 with pyDVL's public
``influence_factors`` and with an independent EK-FAC computation. A pyDVL
release that changes any of it fails those tests rather than the audit's
numbers going quietly wrong.
"""

from __future__ import annotations

import torch
from pydvl.influence.torch import EkfacInfluence
from pydvl.influence.torch.base import TorchComposableInfluence
from torch import nn

from noise_audit.errors import NoiseAuditError

__all__ = ["Float64EkfacInfluence", "solve_hvp", "fitted_dtypes"]


class Float64EkfacInfluence(EkfacInfluence):
    """pyDVL's EK-FAC with its factors in the layers' dtype, not torch's default.

    Everything else is pyDVL's: only the zero tensors that the Kronecker
    factors and the refitted diagonal are accumulated into are created with
    ``dtype=module.weight.dtype``. (pyDVL's hooks also append a column of
    ``torch.ones`` in the default dtype to each layer's input; ``torch.cat``
    promotes it to the input's dtype, and ones are exact in any dtype.)
    :meth:`fit` checks that every fitted factor has the model's dtype.
    """

    @staticmethod
    def _init_layer_kfac_blocks(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(module, nn.Linear):
            return EkfacInfluence._init_layer_kfac_blocks(module)  # pyDVL's error for other layers
        s_a = module.in_features + int(module.bias is not None)
        s_g = module.out_features
        dtype, device = module.weight.dtype, module.weight.device
        return torch.zeros((s_a, s_a), dtype=dtype, device=device), torch.zeros((s_g, s_g), dtype=dtype, device=device)

    @staticmethod
    def _init_layer_diag(module: nn.Module) -> torch.Tensor:
        if not isinstance(module, nn.Linear):
            return EkfacInfluence._init_layer_diag(module)
        s_a = module.in_features + int(module.bias is not None)
        return torch.zeros((s_a * module.out_features,), dtype=module.weight.dtype, device=module.weight.device)

    def fit(self, data) -> Float64EkfacInfluence:
        super().fit(data)
        wrong = {str(d) for d in fitted_dtypes(self)} - {str(self.model_dtype)}
        if wrong:
            raise NoiseAuditError(
                f"pyDVL's EK-FAC fitted factors in {sorted(wrong)}, not the model's {self.model_dtype}: "
                "the pyDVL version differs from the one noise_audit.core.pydvl_adapter supports"
            )
        return self


def fitted_dtypes(model: EkfacInfluence) -> set[torch.dtype]:
    """The dtypes of a fitted EK-FAC model's eigenvectors and diagonals."""
    rep = model.ekfac_representation
    return {t.dtype for ts in (rep.evecs_a, rep.evecs_g, rep.diags) for t in ts}


def solve_hvp(model: EkfacInfluence | TorchComposableInfluence, rhs: torch.Tensor) -> torch.Tensor:
    """``H^{-1}`` applied to each row of ``rhs`` (shape ``(k, n_parameters)``), with the model's solver.

    The same operator as pyDVL's ``model.influence_factors(x, y)`` applies to
    the rows of per-sample gradients, in pyDVL's flat parameter order.
    """
    if rhs.ndim != 2:
        raise NoiseAuditError(f"rhs must have shape (k, n_parameters), not {tuple(rhs.shape)}")
    if not model.is_fitted:
        raise NoiseAuditError("the influence model must be fitted before solving")
    if isinstance(model, EkfacInfluence):
        return model._solve_hvp(rhs)
    if not isinstance(model, TorchComposableInfluence):
        raise NoiseAuditError(f"no solver for {type(model).__name__}")
    blocks = model.block_mapper.composable_block_dict
    if len(blocks) != 1:
        raise NoiseAuditError("Only the full (single-block) Hessian is supported")
    (block,) = blocks.values()
    return block.op.apply(rhs)
