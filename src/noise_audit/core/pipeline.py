"""Stages 3-4 of an audit: head, cross-validation and influence, on features.

Two ways through the same stages, with the same results (tests hold them
equal):

- :func:`linear_signals`, for the audit's linear head (``method="auto"`` or
  ``"linear"``): every pass over the samples is a block function on
  :class:`~noise_audit.core.blocks.Blocks`, so the rows stay where they are, in
  this process (or its GPU) or on Dask workers, and nothing larger than the
  features is ever built.
- :func:`reference_signals`, for pyDVL's solvers and for a fine-tuned last
  block (``train_last_block``): arrays in this process, torch autograd and
  pyDVL, the reference the fast path is checked against.

Both return :class:`Signals`, per sample in the view's order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch

from noise_audit.core import head as heads
from noise_audit.core import scores
from noise_audit.core.blocks import Blocks
from noise_audit.core.head import class_logits
from noise_audit.core.linear_influence import LinearHeadInfluence


class Clock(Protocol):
    """Times the stages (``auditing._Clock``): ``start(stage)``, then ``stop()``."""

    def start(self, stage: str) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Signals:
    """What the head and influence stages computed, per sample in view order."""

    l2: float
    l2_scores: dict[float, float] | None
    oos_logits: np.ndarray  # (n, C) out-of-fold logits
    clean_oos_logits: np.ndarray  # (n, C) out-of-fold logits of folds fit without the first suspects
    head: torch.nn.Module  # the trained head (a LinearHead or the fine-tuned block)
    history: dict[str, Any]
    test_pred: np.ndarray  # predicted class of each held-out sample
    average_influence: np.ndarray
    self_influence: np.ndarray
    loss: np.ndarray  # in-sample loss of the given label under the head
    influence_method: str


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each sample's stratified cross-validation fold (the audit's folds)."""
    from sklearn.model_selection import StratifiedKFold

    out = np.empty(len(labels), dtype=np.int64)
    for k, (_, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)):
        out[held] = k
    return out


def linear_signals(blocks: Blocks, n_features: int, n_classes: int, regularization: float | str, folds: int,
                   clock: Clock, progress: bool = False, device: torch.device | str | None = None,
                   init: torch.nn.Module | None = None) -> Signals:
    """The linear head's stages on ``blocks`` (columns ``x``, ``y``, ``train``, ``fold``).

    ``init``: a head to start the head's fit from (a warm start,
    :mod:`noise_audit.core.warm_start`); the folds start from the fitted head
    either way."""
    y = blocks.map_concat(_column, "y")
    l2_scores = None
    if regularization == "auto":
        clock.start("cross_validation")
        l2_scores, candidates = {}, {}
        for l2 in heads.L2_GRID:
            candidates[l2] = heads.cross_val_logits(blocks, n_features, n_classes, l2, folds, device=device)
            l2_scores[l2] = heads.log_loss(candidates[l2], y)
        l2 = min(l2_scores, key=l2_scores.__getitem__)
        clock.stop()
    else:
        l2 = cast(float, regularization)  # not "auto": a number

    clock.start("head")
    head, history = heads.fit_linear_head(blocks, n_features, n_classes, l2, rows="train", val_rows="test",
                                          init=init, device=device)
    w, b = blocks.arg(head.fc.weight.detach()), blocks.arg(head.fc.bias.detach())
    test_pred = blocks.map_concat(class_logits, w, b, "test").argmax(1)
    clock.stop()

    clock.start("cross_validation")
    if regularization == "auto":
        oos_logits = candidates[l2]
    else:
        # Folds start at the head's minimum (convex: the same minima, a fraction of the steps).
        oos_logits = heads.cross_val_logits(blocks, n_features, n_classes, l2, folds, init=head, progress=progress,
                                            device=device)
    clock.stop()

    clock.start("influence")
    model = LinearHeadInfluence.from_head(head, l2).fit_blocks(blocks)
    avg = model.train_and_test_influence()  # held-out rows: roles swapped
    self_infl = model.self_influence_blocks("all")
    loss = scores.given_label_loss(blocks.map_concat(class_logits, w, b, "all"), y)
    clock.stop()

    clock.start("cross_validation")  # clean and refit (scores module doc, step 2)
    drop = scores.refit_suspects(y, oos_logits, avg)
    clean_oos_logits = heads.cross_val_logits(blocks.with_column("fit", ~drop), n_features, n_classes, l2, folds,
                                              init=head, progress=progress, device=device)
    clock.stop()
    return Signals(l2, l2_scores, oos_logits, clean_oos_logits, head, history, test_pred, avg, self_infl, loss,
                   "linear")


def reference_signals(x: np.ndarray, y: np.ndarray, is_test: np.ndarray, folds_of: np.ndarray, n_classes: int,
                      regularization: float | str, folds: int, seed: int, method: str, clock: Clock,
                      make_head: Callable[[int], torch.nn.Module] | None = None, progress: bool = False,
                      device: torch.device | str | None = None) -> Signals:
    """The same stages with arrays, torch autograd and pyDVL's solvers."""
    from noise_audit.core import influence as infl  # pyDVL: imported only on this path (the GPU benchmark has none)

    tr, te = ~is_test, is_test
    splits = [(np.flatnonzero(folds_of != k), np.flatnonzero(folds_of == k)) for k in range(folds)]
    l2_scores = None
    if regularization == "auto":
        clock.start("cross_validation")
        l2, oos_logits, l2_scores = heads.select_l2(x, y, n_classes, folds=folds, seed=seed, make_head=make_head,
                                                    splits=splits, device=device)
        clock.stop()
    else:
        l2 = cast(float, regularization)  # not "auto": a number

    clock.start("head")
    head, history = heads.fit_head(x[tr], y[tr], n_classes, l2, x_val=x[te], y_val=y[te], seed=seed,
                                   make_head=make_head, device=device)
    test_pred = heads.predict_logits(head, x[te]).argmax(1)
    clock.stop()

    clock.start("cross_validation")
    if regularization != "auto":
        oos_logits = heads.cross_val_probs(x, y, n_classes, l2, folds, seed, make_head, progress,
                                           init=head if make_head is None else None, splits=splits, device=device)
    clock.stop()

    clock.start("influence")
    model = infl.fit_influence_model(head, x[tr], y[tr], l2, method)
    avg = np.zeros(len(y))
    avg[tr] = infl.average_influence(model, head, x[te], y[te], x[tr], y[tr])
    avg[te] = infl.average_influence(model, head, x[tr], y[tr], x[te], y[te])  # roles swapped
    self_infl = infl.self_influence(model, x, y)
    loss = scores.given_label_loss(heads.predict_logits(head, x), y)
    clock.stop()

    clock.start("cross_validation")  # clean and refit (scores module doc, step 2)
    drop = scores.refit_suspects(y, oos_logits, avg)
    clean_splits = [(fit[~drop[fit]], held) for fit, held in splits]
    clean_oos_logits = heads.cross_val_probs(x, y, n_classes, l2, folds, seed, make_head, progress,
                                             init=head if make_head is None else None, splits=clean_splits,
                                             device=device)
    clock.stop()
    return Signals(l2, l2_scores, oos_logits, clean_oos_logits, head, history, test_pred, avg, self_infl, loss,
                   cast(Any, model).method_name)  # set by fit_influence_model


def _column(block: dict[str, Any], name: str) -> Any:
    return block[name]

