"""The influence weight of the ranking, chosen per audit from the data: the probe.

The ranking mixes two views (:func:`noise_audit.core.scores.ranking_score`):
the harm a sample does to the held-out set (minus its average influence) and
the out-of-sample loss of its given label. Which mix finds wrong labels best
depends on the noise, which the audit does not know: under **uniform** flips
the loss (cleanlab's view) is the sharper of the two, and a half share of
influence costs AP against cleanlab's label quality; under **systematic**
flips (class a labelled b again and again) the folds learn the flip and
only influence still sees it (docs/benchmarks.md, "The influence weight").

So the audit asks its own data, the way the loss view's temperature is
chosen by labels planted on the held-out rows
(:func:`~noise_audit.core.scores.loss_view_temperature`):

1. *Where to plant.* Training rows the first pass judges clean: all but the
   top of the audit's ranking at the fixed weight, as many as the noise
   model expects to be wrong (at most half of them), so that real errors
   do not pollute the probe's truth (:func:`clean_rows`). On a big audit, a
   stratified subsample of at most :data:`MAX_PROBE_ROWS` rows
   (:func:`probe_rows`), which bounds the probe's cost.
2. *What to plant.* Flips drawn from the noise model's matrix
   ``N[given, true]`` (:func:`~noise_audit.core.noise_model.noise_model_parts`:
   EM from cleanlab's estimate on the out-of-sample probabilities): how
   labels seem to go wrong in this data, at the rate the model expects
   (kept within :data:`RATE_BOUNDS`; :func:`plant_flips`). Uniform noise
   plants uniform flips, pair noise plants pair flips.
3. *The two views again*, on the planted labels, with the audit's own
   stages: out-of-fold logits of the same folds, the closed-form average
   influence of a head fit on the planted training labels, and the folds
   fit again without that first ranking's suspects (:func:`planted_views`);
   each candidate ranks as the audit would
   (:func:`~noise_audit.core.scores.audit_ranking`).
4. *The choice.* Each candidate weight of :data:`CANDIDATES` ranks the clean
   rows; its AP at finding the planted flips (scikit-learn's
   ``average_precision_score``), averaged over :data:`PLANTINGS` plantings
   with different seeds, and the best wins; ties go to
   :data:`~noise_audit.core.scores.INFLUENCE_WEIGHT` (½, the old fixed
   weight) (:func:`pick_weight`).

A previous study on CIFAR-10 two-class pairs at 32 px (10% and 20% uniform
flips, 3 seeds) found fixed ½ below cleanlab in 5 of 6 rows and the probe
with three plantings in none (one planting: 3 misses), and the probe kept
influence on pair-noise rows. The cost: each planting refits the folds
twice (``2 (folds + 1)`` head fits, all starting from the audit's head),
one head and its influence, on at most :data:`MAX_PROBE_ROWS` rows; three
plantings are about three times the head, cross-validation and influence
stages of an audit of that size (measured 2.2-2.5 times on average, at most
4.2, ``bench/weight_probe.py``), and nothing is recomputed from the images.
On the seed pair at 64 px under uniform flips the probe chose 0 in every
cell and beat cleanlab where the fixed ½ lost to it; under pair flips on
three classes it kept ½; on the weak CIFAR-10 heads at 32 px it kept ½
everywhere (docs/benchmarks.md).

The weight applies to the final ranking; the clean-and-refit step's first
ranking (:func:`~noise_audit.core.scores.refit_suspects`) stays at ½, as
before. With fewer than :data:`MIN_CLEAN_ROWS` clean training rows, or no
held-out row among the probe's, the audit keeps ½ and says why
(``influence_weight_note`` in the run's config).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import average_precision_score

from noise_audit.core import head as heads
from noise_audit.core import scores
from noise_audit.core.blocks import Block, Blocks
from noise_audit.core.linear_influence import LinearHeadInfluence
from noise_audit.core.noise_model import noise_model_parts, true_class_probs

if TYPE_CHECKING:
    from noise_audit.core.pipeline import Signals

CANDIDATES = (0.0, 0.5, 1.0)  # the weights the probe chooses from
PLANTINGS = 3  # plantings per audit (one planting missed 3 of 6 rows in the study, three none)
MAX_PROBE_ROWS = 5000  # rows the probe refits on, at most (a stratified subsample above)
RATE_BOUNDS = (0.02, 0.3)  # the share of clean rows planted: the noise model's rate, clipped
MIN_PLANTED = 10  # flips per planting, at least: an AP of fewer is noise
MIN_CLEAN_ROWS = 4 * MIN_PLANTED  # clean training rows needed to probe at all


@dataclass
class WeightChoice:
    """The influence weight an audit ranks with, and why.

    ``requested`` is what the caller asked for (``"auto"`` or a number);
    ``average_precision`` each candidate's mean AP at finding the planted
    flips, ``per_planting`` the same per planting (both ``None`` when no
    probe ran, and ``note`` says why)."""

    weight: float
    requested: str | float
    average_precision: dict[float, float] | None = None
    per_planting: list[dict[float, float]] | None = None
    rows: int = 0
    planted: int = 0
    seconds: float = 0.0
    note: str | None = None
    noise_rate: float | None = None
    candidates: tuple[float, ...] = CANDIDATES

    def config(self) -> dict[str, Any]:
        """What the run's config records (JSON: candidate weights as strings)."""
        probe = None
        if self.average_precision is not None:
            probe = {"candidates": list(self.candidates), "plantings": len(self.per_planting or []),
                     "average_precision": {str(w): ap for w, ap in self.average_precision.items()},
                     "per_planting": [{str(w): ap for w, ap in p.items()} for p in self.per_planting or []],
                     "rows": self.rows, "planted": self.planted, "noise_rate": self.noise_rate}
            # its seconds are not config (a rerun must store the same run): they are in the "scores" timing
        return {"influence_weight": self.weight, "influence_weight_requested": self.requested,
                "influence_weight_probe": probe, "influence_weight_note": self.note}


def fixed(weight: float, requested: str | float, note: str | None = None) -> WeightChoice:
    """A weight given by the caller (or the fallback ½), no probe."""
    return WeightChoice(float(weight), requested, note=note)


def probe_rows(strata: np.ndarray, max_rows: int = MAX_PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """The rows the probe refits on: all of them, or a random subsample of ``max_rows`` stratified
    by ``strata`` (sorted; every stratum keeps its share, and at least one row)."""
    n = len(strata)
    if n <= max_rows:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(strata):
        members = np.flatnonzero(strata == c)
        keep.append(rng.choice(members, size=max(1, int(round(len(members) * max_rows / n))), replace=False))
    return np.sort(np.concatenate(keep))


def clean_rows(first_ranking: np.ndarray, is_test: np.ndarray, n_suspects: int) -> np.ndarray:
    """Training rows the first pass judges clean: all but the ``n_suspects`` highest of
    ``first_ranking`` among them (at most half are left out)."""
    train = np.flatnonzero(~is_test)
    n_out = min(max(int(n_suspects), 0), len(train) // 2)
    order = train[np.argsort(-first_ranking[train], kind="stable")]
    mask = np.zeros(len(is_test), dtype=bool)
    mask[order[n_out:]] = True
    return mask


def plant_flips(labels: np.ndarray, rows: np.ndarray, noise_matrix: npt.ArrayLike, n: int,
                rng: np.random.Generator) -> np.ndarray:
    """``labels`` with ``n`` of ``rows`` (a mask) flipped as the noise matrix says labels go wrong.

    A row's given label ``j`` is taken as its true class: it is picked with
    probability proportional to ``1 - N[j, j]`` (the classes that seem to
    lose labels lose more) and gets label ``i != j`` with probability
    proportional to ``N[i, j]`` (a pair structure is kept). A class the
    matrix sees no noise in still gets a small share, spread evenly over the
    other classes, so any data can be probed."""
    noise = np.asarray(noise_matrix, dtype=float)
    n_classes = noise.shape[0]
    off = noise * (1.0 - np.eye(n_classes)) + 1e-6 * (1.0 - np.eye(n_classes))  # (given i, true j), i != j
    idx = np.flatnonzero(rows)
    weight = off[:, labels[idx]].sum(0)
    chosen = rng.choice(idx, size=min(n, len(idx)), replace=False, p=weight / weight.sum())
    planted = labels.copy()
    for i in chosen:
        column = off[:, labels[i]]
        planted[i] = rng.choice(n_classes, p=column / column.sum())
    return planted


def planted_views(blocks: Blocks, n_features: int, n_classes: int, l2: float, folds: int,
                  init: torch.nn.Module | None,
                  device: torch.device | str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(out-of-fold logits, cleaner folds' logits, average influence)`` of the labels in
    ``blocks``' ``y`` column: the audit's stages (:func:`noise_audit.core.pipeline.linear_signals`,
    the clean-and-refit step included) on the planted labels, from ``init``'s head."""
    oos = heads.cross_val_logits(blocks, n_features, n_classes, l2, folds, init=init, device=device)
    head, _ = heads.fit_linear_head(blocks, n_features, n_classes, l2, rows="train", init=init, device=device)
    avg = LinearHeadInfluence.from_head(head, l2).fit_blocks(blocks).train_and_test_influence()
    drop = scores.refit_suspects(blocks.map_concat(_column, "y"), oos, avg)
    clean_oos = heads.cross_val_logits(blocks.with_column("fit", ~drop), n_features, n_classes, l2, folds, init=init,
                                       device=device)
    return oos, clean_oos, avg


def candidate_aps(planted: np.ndarray, rows: np.ndarray, labels: np.ndarray, is_test: np.ndarray,
                  views: tuple[np.ndarray, np.ndarray, np.ndarray],
                  candidates: tuple[float, ...] = CANDIDATES) -> dict[float, float]:
    """Each candidate weight's AP at ranking the ``planted`` flips first among ``rows`` (masks), the
    ranking being the audit's own (:func:`~noise_audit.core.scores.audit_ranking`) of ``labels``
    and the :func:`planted_views`."""
    oos, clean_oos, avg = views
    return {w: float(average_precision_score(
        planted[rows], scores.audit_ranking(labels, oos, clean_oos, avg, is_test, w)[rows])) for w in candidates}


def pick_weight(aps: dict[float, float], default: float = scores.INFLUENCE_WEIGHT) -> float:
    """The candidate with the best AP; ``default`` when it ties the best."""
    best = max(aps.values())
    if default in aps and aps[default] >= best:
        return default
    return max(aps, key=aps.__getitem__)


def choose_influence_weight(x: np.ndarray | Blocks, labels: np.ndarray, is_test: np.ndarray, fold: np.ndarray,
                            l2: float, folds: int, first_ranking: np.ndarray, noise_matrix: npt.ArrayLike,
                            noise_rate: float, init: torch.nn.Module | None = None, seed: int = 0,
                            device: torch.device | str | None = None, plantings: int = PLANTINGS,
                            max_rows: int = MAX_PROBE_ROWS) -> WeightChoice:
    """The probe (module doc).

    Args:
        x: standardised features, an array or :class:`Blocks` with an ``x``
            column (local or on Dask workers: only the probe's rows come here).
        labels, is_test, fold: the given labels, the held-out mask and each
            row's cross-validation fold.
        l2, folds: the head's L2 strength and the number of folds.
        first_ranking: the audit's ranking at the fixed weight (who looks clean).
        noise_matrix: ``N[given, true]`` of the noise model
            (:func:`~noise_audit.core.noise_model.noise_model_parts`).
        noise_rate: the noise model's share of wrong training labels (the
            mean wrong-label posterior): as many are left out as suspects,
            and that share of the rest is planted (within :data:`RATE_BOUNDS`).
        init: the audit's head; the refits start from it, as the audit's
            folds do.
    """
    t0 = time.perf_counter()
    labels, is_test = np.asarray(labels), np.asarray(is_test, dtype=bool)
    n_classes = np.asarray(noise_matrix).shape[0]
    clean = clean_rows(first_ranking, is_test, int(round(noise_rate * (~is_test).sum())))
    keep = probe_rows(labels * 2 + is_test, max_rows, seed)  # held-out rows keep their share too
    y, test, clean = labels[keep], is_test[keep], clean[keep]
    n_plant = max(MIN_PLANTED, int(round(float(np.clip(noise_rate, *RATE_BOUNDS)) * clean.sum())))
    if clean.sum() < MIN_CLEAN_ROWS or test.sum() == 0:
        return fixed(scores.INFLUENCE_WEIGHT, "auto", note=f"too few clean training rows to probe ({int(clean.sum())})")
    xs = gather_rows(x, keep) if isinstance(x, Blocks) else np.asarray(x[keep], dtype=np.float64)
    per_planting = []
    for k in range(plantings):
        planted = plant_flips(y, clean, noise_matrix, n_plant, np.random.default_rng([seed, k]))
        blocks = Blocks.from_arrays({"x": xs, "y": planted, "train": ~test, "fold": fold[keep]}, device=device)
        views = planted_views(blocks, xs.shape[1], n_classes, l2, folds, init, device)
        per_planting.append(candidate_aps(planted != y, clean, planted, test, views))
    mean = {w: float(np.mean([p[w] for p in per_planting])) for w in CANDIDATES}
    return WeightChoice(pick_weight(mean), "auto", mean, per_planting, rows=len(keep), planted=n_plant,
                        seconds=time.perf_counter() - t0, noise_rate=float(noise_rate))


def audit_weight(requested: float | str, x: np.ndarray | Blocks, labels: np.ndarray, is_test: np.ndarray,
                 fold: np.ndarray, signals: Signals, folds: int, seed: int = 0,
                 device: torch.device | str | None = None, linear_head: bool = True,
                 noise_parts: tuple[np.ndarray, np.ndarray] | None = None) -> WeightChoice:
    """An audit's influence weight: ``requested`` when it is a number, else the probe's choice
    (:func:`choose_influence_weight`) from the audit's stages' ``signals``. ``noise_parts``: the
    noise model's :func:`~noise_audit.core.noise_model.noise_model_parts`, when the caller has
    them. A fine-tuned last block (``linear_head=False``) keeps ½: the probe refits linear heads."""
    if requested != "auto":
        return fixed(float(requested), float(requested))
    if not linear_head:
        return fixed(scores.INFLUENCE_WEIGHT, "auto", note="a fine-tuned last block: the probe refits linear heads only")
    labels, is_test = np.asarray(labels), np.asarray(is_test, dtype=bool)
    probs, noise = noise_parts or noise_model_parts(labels, signals.oos_logits, signals.clean_oos_logits, is_test)
    wrong = 1.0 - true_class_probs(labels, probs, noise)[np.arange(len(labels)), labels]
    first = scores.audit_ranking(labels, signals.oos_logits, signals.clean_oos_logits, signals.average_influence,
                                 is_test)
    return choose_influence_weight(x, labels, is_test, fold, signals.l2, folds, first, noise,
                                   float(wrong[~is_test].mean()), init=signals.head, seed=seed, device=device)


def gather_rows(blocks: Blocks, rows: np.ndarray, name: str = "x") -> np.ndarray:
    """Column ``name`` of ``rows`` (indices, sorted) of ``blocks``, here, as float64 numpy: the
    probe's features (at most :data:`MAX_PROBE_ROWS` rows, see :func:`probe_rows`)."""
    mask = np.zeros(blocks.n, dtype=bool)
    mask[rows] = True
    return np.asarray(blocks.with_column("probe", mask).map_concat(_selected, name), dtype=np.float64)


def _column(block: Block, name: str) -> Any:
    return block[name]


def _selected(block: Block, name: str) -> Any:
    values, keep = block[name], block["probe"]
    if torch.is_tensor(values):
        return values[torch.as_tensor(keep).to(values.device)]
    return values[np.asarray(keep)]
