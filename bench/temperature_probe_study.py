"""Study, round 7 (issue 9): the held-out rows choose the loss view's temperature, by flips planted on them.

The ranking reads the cleaner folds' loss of the given label at the first folds' temperature ``t``
(noise_audit.core.scores.corruption_score), a choice made on the tuning cells. ``bench/limits_study.py``
(run on the *reported* cells with the truth; that is where this idea comes from) found that the choice
pulls the data sets opposite ways: at ``t`` ten64's loss view is better (tuning and reported cells alike:
AP 0.911 against 0.897 at the raw logits under pair flips), cifar32's worse (0.384 against 0.441 under
uniform flips). A fixed choice cannot serve both; the audit has to see which one its data wants.

It can, without the truth. A held-out row's out-of-fold logits do not depend on its own label, and its
given label is taken as right (the audit already does so for average influence and step 3). Give every
held-out row, as well, one planted wrong label (uniform over the other classes, seed 0): a view that ranks
wrong labels above right ones ranks the planted labels' losses above the given ones'. Its AUROC there
is measured for the loss at ``t`` and at the raw logits.

PRE-REGISTRATION (written and committed before any reported cell of this round was scored)
------------------------------------------------------------------------------------------
  old: today's score (the loss view at ``t``);
  new: the loss view at the raw logits when, on the held-out rows with their planted labels, the raw
       logits' AUROC is higher than ``t``'s; otherwise at ``t``. Fewer than 100 held-out rows (or none):
       as old. Only the final ranking changes (step 2's first ranking and step 3's noise model do not),
       so the study on the stored arrays is exact; the stored "what cleaning buys" accuracies are the old
       suspects' and are not compared.
Tuning cells, computed before this was written (a scratch probe, the same rule): the planted-label AUROC
prefers ``t`` in all 32 (0.982-0.984 against 0.979-0.982), as the flips themselves do in all 32, so new
and old are the same there. Rule: as round 6. new goes on to the reported cells unless its tuning mean
AP is lower than old's by more than 0.002 or its pooled ECE higher by more than 0.002; the reported cells
are then scored once and reported whatever they show; the library takes it only if the reported mean AP
is not lower and no data set's pooled ECE is higher by more than 0.005 (one-sided, the idea having come
from reported cells).

    python bench/temperature_probe_study.py tuning
    python bench/temperature_probe_study.py reported
"""

import numpy as np

import refit_gate_study as study
from _common import ROOT

MIN_HELD_OUT = 100
RESULTS = ROOT / "bench" / "results" / "temperature_probe_study.json"


def planted_auroc(logits, labels, held_out, seed=0):
    """AUROC of the given-label loss at separating a planted wrong label from the given one, on the held-out rows.

    The rule as declared, frozen (the library's ``scores.planted_label_auroc`` later also bounds
    ``-inf`` logits, which no grid cell has)."""
    from sklearn.metrics import roc_auc_score

    from noise_audit.core import scores

    z, y = np.asarray(logits, float)[held_out], np.asarray(labels)[held_out]
    n_classes = z.shape[1]
    planted = (y + np.random.default_rng(seed).integers(1, n_classes, size=len(y))) % n_classes
    right, wrong = scores.given_label_loss(z, y), scores.given_label_loss(z, planted)
    return float(roc_auc_score(np.r_[np.zeros(len(y)), np.ones(len(y))], np.r_[right, wrong]))


def prefers_raw(labels, clean_oos_logits, t, is_test):
    if is_test is None or np.asarray(is_test, bool).sum() < MIN_HELD_OUT:
        return False, {}
    held_out = np.asarray(is_test, bool)
    auroc = {"temperature": planted_auroc(np.asarray(clean_oos_logits, float) / t, labels, held_out),
             "raw": planted_auroc(clean_oos_logits, labels, held_out)}
    return auroc["raw"] > auroc["temperature"], auroc


def probe_temperature(labels, clean_oos_logits, t, is_test):
    """The candidate: 1 (the raw logits) when :func:`prefers_raw`, else ``t``."""
    raw, _ = prefers_raw(labels, clean_oos_logits, t, is_test)
    return 1.0 if raw else t


def choice(stored):
    """The stored cell unchanged, and what the probe chose for it."""
    from noise_audit.core import scores

    y = stored["y_noisy"]
    raw, auroc = prefers_raw(y, stored["clean_oos_logits"], scores.temperature(stored["oos_logits"], y),
                             stored["is_test"])
    return stored, {"raw": bool(raw), **{f"auroc_{k}": v for k, v in auroc.items()}}


def main():
    study.run_round(__doc__, RESULTS, choice, "picks", "raw", "raw logits chosen",
                    study.score_with_loss_temperature(probe_temperature))


if __name__ == "__main__":
    main()
