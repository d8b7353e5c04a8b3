"""What cleaning buys: the held-out accuracy of the head refit without some samples.

The seed notebook's point is that fixing flipped labels improves the model.
:func:`refit_accuracy` measures it for any removal: the audit's top suspects,
as many random samples, or exactly the flipped ones (when the truth is known).
The head is the audit's (same features, standardisation and L2), refit on
the training rows that remain and scored on the untouched held-out rows.
"""

from __future__ import annotations

import numpy as np

from . import head as heads
from .blocks import Blocks
from .linear_influence import class_logits


def refit_accuracy(blocks: Blocks, n_features: int, n_classes: int, l2: float, removals: dict, init=None,
                   device=None) -> dict:
    """Held-out accuracy of the head refit on the training rows minus each removal.

    Args:
        blocks: the audit's row blocks (columns ``x``, ``y``, ``train``).
        n_features, n_classes, l2: the audit's head.
        removals: ``{name: boolean mask (n,)}`` of training rows to leave out.
        init: a head to start from (the audit's: a few steps instead of many).

    Returns:
        ``{name: accuracy}``, plus ``"none"``: nothing removed.
    """
    train = blocks.map_concat(_column, "train").astype(bool)
    y = blocks.map_concat(_column, "y")
    out = {}
    for name, removed in {"none": np.zeros(len(y), dtype=bool), **removals}.items():
        kept = blocks.with_column("train", train & ~np.asarray(removed, dtype=bool))
        head, _ = heads.fit_linear_head(kept, n_features, n_classes, l2, rows="train", init=init, device=device)
        w, b = kept.arg(head.fc.weight.detach()), kept.arg(head.fc.bias.detach())
        pred = blocks.map_concat(class_logits, w, b, "all").argmax(1)
        out[name] = float((pred[~train] == y[~train]).mean())
    return out


def random_removal(candidates, k, seed=0):
    """``k`` of the ``candidates`` (boolean mask) chosen at random, as a mask."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(np.flatnonzero(candidates), size=min(k, int(np.sum(candidates))), replace=False)
    mask = np.zeros(len(candidates), dtype=bool)
    mask[pick] = True
    return mask


def _column(block, name):
    return block[name]
