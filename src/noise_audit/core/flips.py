"""Which labels to flip, and to what: the rules behind ``na.inject_label_noise``.

Pure numpy (no FiftyOne), so benchmarks that run without a database use the
same flips as the library (see :mod:`noise_audit.noise` for the strategies).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

STRATEGIES = ("uniform", "pair", "confusion", "influential")


def _other_class(rng: np.random.Generator, label: int, n_classes: int) -> int:
    shift = rng.integers(1, n_classes)
    return (label + shift) % n_classes


def confusion_flips(rng: np.random.Generator, labels: np.ndarray, k: int,
                    reference_probs: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``k`` instance-dependent flips, as a tired annotator would make them.

    A sample is picked with probability proportional to how likely the
    reference model finds its most likely *wrong* class (ambiguous images
    are mislabeled more often), and gets that class.
    """
    p = np.array(reference_probs, dtype=float)
    p[np.arange(len(labels)), labels] = -np.inf
    target = p.argmax(1)
    weight = np.clip(p[np.arange(len(labels)), target], 0.0, None) + 1e-12
    idx = np.sort(rng.choice(len(labels), size=k, replace=False, p=weight / weight.sum()))
    return idx, target[idx]


def choose_flips(labels: npt.ArrayLike, n_classes: int, fraction: float, strategy: str, seed: int = 0,
                 influence: np.ndarray | None = None,
                 reference_probs: npt.ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Picks which samples to flip and their new classes.

    Args:
        labels: integer labels, shape ``(n,)``.
        n_classes: number of classes.
        fraction: share of samples to flip, in ``[0, 1)``.
        strategy: one of :data:`STRATEGIES`.
        seed: random seed; the same seed gives the same flips.
        influence: per-sample average influence, for ``influential``.
        reference_probs: ``(n, n_classes)`` out-of-sample class probabilities
            of a reference model fit on the clean labels, for ``confusion``.

    Returns:
        ``(indices, new_labels)``: positions flipped and their new labels.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(labels)
    if strategy == "uniform":
        k = int(round(fraction * n))
        idx = np.sort(rng.choice(n, size=k, replace=False))
        new = np.array([_other_class(rng, labels[i], n_classes) for i in idx], dtype=int)
        return idx, new
    if strategy == "confusion":
        return confusion_flips(rng, labels, int(round(fraction * n)), cast("npt.ArrayLike", reference_probs))
    flip_idx: list[int] = []
    flip_new: list[int] = []
    if strategy == "pair":
        cycle = rng.permutation(n_classes)
        partner = {int(cycle[i]): int(cycle[(i + 1) % n_classes]) for i in range(n_classes)}
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * len(members)))
        if k == 0:
            continue
        if strategy == "pair":
            chosen = rng.choice(members, size=k, replace=False)
            targets = [partner[c]] * k
        else:  # influential: the k most helpful samples of the class
            order = members[np.argsort(-cast(np.ndarray, influence)[members], kind="stable")]
            chosen = order[:k]
            targets = [_other_class(rng, c, n_classes) for _ in chosen]
        flip_idx.extend(chosen.tolist())
        flip_new.extend(targets)
    order = np.argsort(flip_idx)
    return np.asarray(flip_idx, dtype=int)[order], np.asarray(flip_new, dtype=int)[order]
